//! Closes per-tenant windows of activity events into objects and queues them for upload.
//!
//! Not built yet: the README's "Status" section says what exists today.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("batcher: not built yet; see the README's Status section");
    ExitCode::from(2)
}
