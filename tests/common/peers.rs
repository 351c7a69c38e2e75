//! Real peers for the identity and routing tests, each started on free
//! loopback ports in its own temp dir and killed (by PID) on drop: HAProxy
//! (a PROXY protocol sender and receiver), nginx's stream module (a PROXY
//! protocol receiver whose access log shows `$proxy_protocol_addr`), and
//! `openssl s_server` TLS backends with certificates made for the test.

use super::{TempDir, eventually};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How long a peer may take to start listening.
const START: Duration = Duration::from_secs(10);

/// A child process whose output lines are collected, killed on drop.
pub struct Peer {
    child: Child,
    /// Every stdout and stderr line so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    /// Its directory (config, certificates, logs).
    pub dir: TempDir,
}

impl Peer {
    fn spawn(name: &'static str, mut command: Command, dir: TempDir) -> Peer {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name} did not start: {e} (scripts/deps.sh installs it)"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("{name}: {line}");
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Peer { child, lines, dir }
    }

    /// Waits until a line holding `needle` was printed, and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        super::wait_for_line_in(&self.lines, START, needle)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(addr: SocketAddr, what: &str) {
    eventually(START, &format!("{what} listening on {addr}"), || {
        TcpStream::connect(addr).is_ok()
    });
}

/// A free loopback address for a peer to listen on, from 10000 to 19999:
/// below the kernel's ephemeral range (32768 up), from which `free_port`
/// and every outgoing connection take theirs, so a peer started here never
/// takes the port another test freed for a moment to restart its server on
/// (dnsmasq's, say).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], super::free_port_in(10_000..20_000)))
}

/// HAProxy in the foreground, logging each connection (tcplog) to stdout.
pub struct Haproxy(pub Peer);

impl Haproxy {
    /// Runs HAProxy with `sections` (frontends, backends, listens) after a
    /// global and defaults section; waits until `listening` accepts.
    pub fn start(sections: &str, listening: SocketAddr) -> Haproxy {
        let dir = TempDir::new();
        let file = dir.join("haproxy.cfg");
        let text = format!(
            "global\n  log stdout format raw local0\n  maxconn 1000\n\
             defaults\n  mode tcp\n  log global\n  option tcplog\n  timeout connect 2s\n  \
             timeout client 30s\n  timeout server 30s\n{sections}\n"
        );
        std::fs::write(&file, text).unwrap();
        let mut command = Command::new(program("haproxy"));
        command.arg("-f").arg(&file).arg("-db");
        let peer = Peer::spawn("haproxy", command, dir);
        wait_listening(listening, "haproxy");
        Haproxy(peer)
    }
}

/// nginx with a `stream` block, in the foreground.
pub struct Nginx(pub Peer);

impl Nginx {
    /// Runs nginx with `stream` (the inside of its `stream {}` block; `DIR`
    /// is replaced by its directory) and `http` (the inside of an `http {}`
    /// block, or empty for none); waits until `listening` accepts.
    pub fn start(stream: &str, http: &str, listening: SocketAddr) -> Nginx {
        let dir = TempDir::new();
        let root = dir.0.display().to_string();
        let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
        let load = if std::path::Path::new(module).exists() && !stream.is_empty() {
            format!("load_module {module};\n")
        } else {
            String::new()
        };
        let mut text = format!(
            "{load}pid {root}/nginx.pid;\nerror_log {root}/error.log info;\nworker_processes 1;\n\
             events {{ worker_connections 1024; }}\n"
        );
        if !stream.is_empty() {
            text += &format!("stream {{\n{}\n}}\n", stream.replace("DIR", &root));
        }
        if !http.is_empty() {
            text += &format!(
                "http {{\n  access_log off;\n  client_body_temp_path {root}/body;\n  \
                 proxy_temp_path {root}/proxy;\n  fastcgi_temp_path {root}/fastcgi;\n  \
                 uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n{}\n}}\n",
                http.replace("DIR", &root)
            );
        }
        let file = dir.join("nginx.conf");
        std::fs::write(&file, text).unwrap();
        let mut command = Command::new(program("nginx"));
        command
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&file)
            .arg("-g")
            // One process, the one killed on drop: a master killed with
            // SIGKILL would leave its worker serving on, orphaned.
            .arg("daemon off; master_process off;");
        let peer = Peer::spawn("nginx", command, dir);
        wait_listening(listening, "nginx");
        Nginx(peer)
    }

    /// A file of its directory, as text (empty if it does not exist yet).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.dir.join(name)).unwrap_or_default()
    }
}

fn program(name: &str) -> PathBuf {
    let sbin = PathBuf::from(format!("/usr/sbin/{name}"));
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

/// A test CA and leaf certificates for some names, made with openssl.
pub struct Certs {
    dir: TempDir,
}

impl Certs {
    /// A CA, and a key and certificate (CN and SAN `name`) for each of
    /// `names`, signed by it.
    pub fn new(names: &[&str]) -> Certs {
        let dir = TempDir::new();
        let sans: Vec<(String, String)> = names
            .iter()
            .map(|name| (name.to_string(), format!("subjectAltName=DNS:{name}")))
            .collect();
        let leaves: Vec<(&str, &str)> =
            sans.iter().map(|(n, e)| (n.as_str(), e.as_str())).collect();
        issue_certificates(&dir.0, &leaves);
        Certs { dir }
    }

    /// The CA certificate's path.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate and key of `name`.
    pub fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(&format!("{name}.pem")),
            self.dir.join(&format!("{name}.key")),
        )
    }
}

/// An EC P-256 key, made with the request, unencrypted.
const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Makes, with openssl, in `dir`: a CA (`ca.pem`, `ca.key`), and for each
/// `(name, extension)` a key and certificate (`name.key`, `name.pem`, CN
/// `name`) signed by it, carrying `extension` (an openssl extension line
/// such as `subjectAltName=DNS:api.example.com` or
/// `extendedKeyUsage=clientAuth`).
pub fn issue_certificates(dir: &Path, leaves: &[(&str, &str)]) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca = [
        "-x509",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=l4mesh test CA",
    ];
    run(&[&["req"][..], &NEW_KEY, &ca].concat());
    for (name, extension) in leaves {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&ext), format!("{extension}\n")).unwrap();
        let subject = format!("/CN={name}");
        let request = ["-keyout", &key, "-out", &csr, "-subj", &subject];
        run(&[&["req"][..], &NEW_KEY, &request].concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

/// `openssl s_server -www` serving `name`'s certificate: a TLS backend
/// that answers an HTTP GET with a status page.
pub struct TlsBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    _peer: Peer,
}

impl TlsBackend {
    /// Starts a backend with `name`'s certificate from `certs`.
    pub fn start(certs: &Certs, name: &str) -> TlsBackend {
        let addr = free_addr();
        let (cert, key) = certs.pair(name);
        let mut command = Command::new("openssl");
        command
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key);
        let peer = Peer::spawn("s_server", command, TempDir::new());
        wait_listening(addr, "openssl s_server");
        TlsBackend { addr, _peer: peer }
    }
}

/// What `openssl s_client` saw connecting to `addr` with SNI `servername`
/// (none if `None`), checking the chain against `ca` and, if given, the
/// host name `verify`: its output (the peer certificate's subject, the
/// verification result, and the answer to an HTTP GET it sends).
pub fn s_client(
    addr: SocketAddr,
    servername: Option<&str>,
    verify: Option<&str>,
    ca: &std::path::Path,
) -> String {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect"])
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .arg("-ign_eof");
    match servername {
        Some(name) => command.args(["-servername", name]),
        None => command.arg("-noservername"),
    };
    if let Some(name) = verify {
        command.args(["-verify_hostname", name, "-verify_return_error"]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n");
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
