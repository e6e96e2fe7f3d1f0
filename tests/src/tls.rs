//! TLS for the tests: the private CA and the certificate for localhost that
//! `scripts/local-services.sh` makes (the S3/STS server's TLS port presents it), and a TLS front
//! for a plain TCP server, `socat` terminating TLS with that certificate.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/local-services.sh` keeps the CA and the certificate for localhost
/// (`ACTIVITY_TEST_TLS_DIR`, default `/var/lib/activity-logs/tls`).
pub fn tls_dir() -> PathBuf {
    std::env::var_os("ACTIVITY_TEST_TLS_DIR").map_or_else(
        || PathBuf::from("/var/lib/activity-logs/tls"),
        PathBuf::from,
    )
}

/// The private CA's certificate (PEM) clients trust.
pub fn ca_file() -> PathBuf {
    tls_dir().join("ca.pem")
}

/// `socat` accepting TLS on `port` for `localhost`, forwarding to a plain TCP port.
pub struct TlsFront {
    pub port: u16,
    /// The private CA's certificate (PEM) that signed the server certificate.
    pub ca_file: PathBuf,
    child: Child,
}

impl TlsFront {
    pub fn start(backend_port: u16) -> Self {
        let dir = tls_dir();
        let port = crate::services::free_port();
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            ))
            .arg(format!("TCP:127.0.0.1:{backend_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat (scripts/local-services.sh installs it)");
        let give_up = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < give_up, "socat did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            ca_file: ca_file(),
            child,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
