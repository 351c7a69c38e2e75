//! `[discovery.etcd]` with mutual TLS and with username/password, against
//! a real etcd configured for each (certificates made by `openssl` for the
//! test), through the `l4mesh` binary: the right credentials route traffic
//! to the endpoint etcd holds; wrong or missing ones leave the source down
//! with a warning that says why.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A single etcd member, killed on drop.
struct Etcd {
    child: Child,
    url: String,
    /// etcdctl's flags for this member (endpoint and credentials).
    ctl: Vec<String>,
    _dir: TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Etcd {
    /// Starts etcd with `tls` (the temp dir's certificates) or plain.
    fn start(dir: TempDir, tls: bool) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let path = |name: &str| dir.join(name).display().to_string();
        let mut command = Command::new("etcd");
        command
            .args(["--name", "s", "--data-dir", &path("data")])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &format!("s=http://127.0.0.1:{peer}")])
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut ctl = vec![format!("--endpoints={url}")];
        if tls {
            command
                .args(["--cert-file", &path("server.pem")])
                .args(["--key-file", &path("server.key")])
                .args(["--client-cert-auth", "--trusted-ca-file", &path("ca.pem")]);
            ctl.extend([
                format!("--cacert={}", path("ca.pem")),
                format!("--cert={}", path("client.pem")),
                format!("--key={}", path("client.key")),
            ]);
        }
        let child = command
            .spawn()
            .expect("etcd is installed (scripts/deps.sh)");
        let etcd = Etcd {
            child,
            url,
            ctl,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !etcd.ctl(&["endpoint", "health"]) {
            assert!(Instant::now() < deadline, "etcd did not answer within 15 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }

    /// Runs `etcdctl ARGS` against this member; whether it succeeded.
    fn ctl(&self, args: &[&str]) -> bool {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(&self.ctl)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in
/// `dir`, made by `openssl`.
fn certificates(dir: &Path) {
    common::peers::issue_certificates(
        dir,
        &[
            ("server", "subjectAltName=IP:127.0.0.1"),
            ("client", "extendedKeyUsage=clientAuth"),
        ],
    );
}

fn config(admin: SocketAddr, etcd: &str) -> String {
    format!(
        "[runtime]\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n\
         [discovery.etcd]\nendpoints = [\"{}\"]\ndial_timeout = \"500ms\"\n{etcd}\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
         [services.web]\ndiscovery = \"etcd\"\n",
        "URL"
    )
}

fn admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[test]
fn it_should_follow_etcd_over_mutual_tls_and_refuse_without_a_client_certificate() {
    let dir = TempDir::new();
    certificates(&dir.0);
    let paths = (
        dir.join("ca.pem").display().to_string(),
        dir.join("client.pem").display().to_string(),
        dir.join("client.key").display().to_string(),
    );
    let etcd = Etcd::start(dir, true);
    let backend = tagged_echo_backend(b'T');
    assert!(etcd.ctl(&[
        "put",
        &format!("/l4mesh/services/web/endpoints/{backend}"),
        "{\"weight\": 1}",
    ]));

    let admin = admin_addr();
    let with_cert = config(
        admin,
        &format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
            paths.0, paths.1, paths.2
        ),
    )
    .replace("URL", &etcd.url);
    let proxy = Binary::start(&with_cert, &[]);
    let web = proxy.addr();
    eventually(Duration::from_secs(5), "traffic through TLS etcd", || {
        tag_of(web) == Some(b'T')
    });
    eventually(Duration::from_secs(5), "etcd up in /metrics", || {
        discovery_metrics(admin, "etcd").0 == 1.0
    });

    // The CA alone: etcd asks for a client certificate and refuses.
    let admin = admin_addr();
    let no_cert = config(admin, &format!("ca = \"{}\"", paths.0)).replace("URL", &etcd.url);
    let refused = Binary::start(&no_cert, &[]);
    let line = refused.wait_for_line(Duration::from_secs(10), "etcd (https://127.0.0.1:");
    // With TLS 1.3 etcd's refusal of the missing certificate arrives after
    // the handshake: the client sees a bad-certificate alert or the
    // connection closed, depending on timing.
    assert!(line.contains("unreachable"), "{line}");
    assert_eq!(discovery_metrics(admin, "etcd").0, 0.0);
    assert_eq!(tag_of(refused.addr()), None, "no endpoint without etcd");
    refused.wait_for_line(
        Duration::from_secs(5),
        "none in the config file, the registry or etcd (yet); put some under the etcd prefix",
    );
}

#[test]
fn it_should_follow_etcd_with_a_password_and_say_so_when_it_is_wrong() {
    let etcd = Etcd::start(TempDir::new(), false);
    assert!(etcd.ctl(&["user", "add", "root", "--new-user-password=s3cret"]));
    assert!(etcd.ctl(&["auth", "enable"]));
    let backend = tagged_echo_backend(b'P');
    assert!(etcd.ctl(&[
        "--user=root:s3cret",
        "put",
        &format!("/l4mesh/services/web/endpoints/{backend}"),
        "",
    ]));

    let admin = admin_addr();
    let right =
        config(admin, "username = \"root\"\npassword = \"s3cret\"").replace("URL", &etcd.url);
    let proxy = Binary::start(&right, &[]);
    let web = proxy.addr();
    eventually(Duration::from_secs(5), "traffic with the password", || {
        tag_of(web) == Some(b'P')
    });
    assert_eq!(discovery_metrics(admin, "etcd").0, 1.0);

    let admin = admin_addr();
    let wrong =
        config(admin, "username = \"root\"\npassword = \"guess\"").replace("URL", &etcd.url);
    let refused = Binary::start(&wrong, &[]);
    let line = refused.wait_for_line(Duration::from_secs(10), "unreachable for");
    assert!(line.contains("authentication failed"), "{line}");
    assert_eq!(discovery_metrics(admin, "etcd").0, 0.0);
    assert_eq!(tag_of(refused.addr()), None, "no endpoint without etcd");
}
