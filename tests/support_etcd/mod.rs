//! Real etcd for tests: one member or a three-member cluster on free
//! loopback ports with temporary data directories, killed and removed on
//! drop; a small client (`Kv`) to put, delete and compact; and a `Gate`, a
//! TCP relay in front of etcd that a test can cut to partition a client.

#![allow(dead_code)]

use super::common::{free_port, restartable_port};
use etcd_client::{Client, CompactionOptions, GetOptions, PutOptions, Txn, TxnOp};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// One etcd member or a cluster; every process is killed on drop.
pub struct Etcd {
    members: Vec<Member>,
    cluster: String,
    root: PathBuf,
}

impl Etcd {
    /// A single member, answering.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// `n` members forming one cluster, all answering.
    pub fn cluster(n: usize) -> Etcd {
        let root = std::env::temp_dir().join(format!(
            "l4mesh-etcd-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&root).unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: restartable_port(),
                peer: restartable_port(),
                dir: root.join(format!("m{i}")),
                child: None,
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            cluster,
            root,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_ready(i);
        }
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::File::create(self.root.join(format!("{}.log", m.name))).unwrap();
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .args(["--data-dir", m.dir.to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
            ])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "l4mesh-test"])
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .args(["--snapshot-count", "10000", "--log-level", "warn"])
            .args(["--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (scripts/deps.sh)");
        self.members[i].child = Some(child);
    }

    fn wait_ready(&self, i: usize) {
        let url = self.url(i);
        let deadline = Instant::now() + Duration::from_secs(15);
        let rt = runtime();
        loop {
            let ok = rt.block_on(async {
                let attempt = async {
                    let mut c = Client::connect([url.as_str()], None).await.ok()?;
                    c.get("ready", None).await.ok()
                };
                tokio::time::timeout(Duration::from_millis(500), attempt)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} did not answer within 15 s; see {}",
                self.root.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Member `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    /// Every member's client URL.
    pub fn urls(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.url(i)).collect()
    }

    /// Member `i`'s client address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[i].client))
    }

    /// Kills member `i` (SIGKILL) and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory and waits until the
    /// cluster answers through it.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i);
    }

    /// A client of every member.
    pub fn kv(&self) -> Kv {
        Kv::new(self.urls())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A blocking etcd client for test steps.
pub struct Kv {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Kv {
    /// Connects to `urls`.
    pub fn new(urls: Vec<String>) -> Kv {
        let rt = runtime();
        let client = rt.block_on(Client::connect(urls, None)).unwrap();
        Kv { rt, client }
    }

    /// Runs `call` until it succeeds (a member restarting may fail a call
    /// or two), for at most 10 s.
    fn retry<T, F: std::future::Future<Output = Result<T, etcd_client::Error>>>(
        &self,
        call: impl Fn(Client) -> F,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = async {
                tokio::time::timeout(Duration::from_secs(2), call(self.client.clone())).await
            };
            match self.rt.block_on(attempt) {
                Ok(Ok(t)) => return t,
                Ok(Err(e)) if Instant::now() >= deadline => panic!("etcd: {e}"),
                Err(_) if Instant::now() >= deadline => panic!("etcd: no answer"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Puts `key` = `value`; returns the revision.
    pub fn put(&mut self, key: &str, value: &str) -> i64 {
        let r = self.retry(|mut c| async move { c.put(key, value, None).await });
        r.header().unwrap().revision()
    }

    /// Puts `key` = `value` with lease `lease`.
    pub fn put_leased(&mut self, key: &str, value: &str, lease: i64) {
        let opts = PutOptions::new().with_lease(lease);
        self.retry(|mut c| {
            let opts = opts.clone();
            async move { c.put(key, value, Some(opts)).await }
        });
    }

    /// Deletes `key`; returns the revision.
    pub fn delete(&mut self, key: &str) -> i64 {
        let r = self.retry(|mut c| async move { c.delete(key, None).await });
        r.header().unwrap().revision()
    }

    /// Puts every pair in one transaction (one revision).
    pub fn put_all(&mut self, pairs: &[(String, String)]) -> i64 {
        let r = self.retry(|mut c| {
            let ops: Vec<TxnOp> = pairs
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                .collect();
            async move { c.txn(Txn::new().and_then(ops)).await }
        });
        r.header().unwrap().revision()
    }

    /// The value of `key`, if any.
    pub fn get(&mut self, key: &str) -> Option<String> {
        let r = self.retry(|mut c| async move { c.get(key, None).await });
        r.kvs()
            .first()
            .map(|kv| kv.value_str().unwrap().to_string())
    }

    /// The keys under `prefix`.
    pub fn keys(&mut self, prefix: &str) -> Vec<String> {
        let r = self.retry(|mut c| async move {
            c.get(prefix, Some(GetOptions::new().with_prefix())).await
        });
        r.kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect()
    }

    /// Compacts the history up to `revision` (physically).
    pub fn compact(&mut self, revision: i64) {
        self.retry(|mut c| async move {
            let opts = CompactionOptions::new().with_physical();
            c.compact(revision, Some(opts)).await
        });
    }
}

/// A TCP relay to `target` that a test can cut (every connection reset,
/// new ones refused) and restore.
pub struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    /// A relay to `target`, open.
    pub fn new(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, c) = (Arc::clone(&open), Arc::clone(&conns));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !o.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                relay(client.try_clone().unwrap(), server.try_clone().unwrap());
                relay(server, client);
            }
        });
        Gate { addr, open, conns }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

fn relay(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// A child process killed (and reaped) on drop, so that a failing test
/// leaves no `l4mesh ctl register` helper behind.
pub struct Killed(pub Child);

impl std::ops::Deref for Killed {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
