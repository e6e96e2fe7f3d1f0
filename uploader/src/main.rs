//! Delivers queued activity log objects into customer S3 buckets.
//!
//! Not built yet: the README's "Status" section says what exists today.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("uploader: not built yet; see the README's Status section");
    ExitCode::from(2)
}
