//! A TLS front for a plain TCP server, made of real parts: a private CA and a server certificate
//! from the `openssl` command, and `socat` terminating TLS in front of the server's port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `socat` accepting TLS on `port` for `localhost`, forwarding to a plain TCP port.
pub struct TlsFront {
    pub port: u16,
    /// The private CA's certificate (PEM) that signed the server certificate.
    pub ca_file: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl TlsFront {
    pub fn start(backend_port: u16) -> Self {
        let dir = std::env::temp_dir().join(crate::unique("tls-front"));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        make_certificates(&dir);
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
            ca_file: dir.join("ca.pem"),
            dir,
            child,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("extensions file");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=activity test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "server.ext",
    ]);
}
