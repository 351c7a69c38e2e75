//! The controller's merge of discovery updates with the file and the
//! registry, over real sockets: updates pushed into a running server as the
//! etcd and DNS sources push them (their sources point at servers that do
//! not answer, so they send nothing of their own; tests/etcd.rs and
//! tests/dns_srv.rs run the real ones).

mod common;

use common::*;
use l4mesh::discovery::{Scope, Update};
use l4mesh::routing::{Discovered, Source};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A port nothing answers on, for sources that must stay silent: the same
/// for every config of one test, or a reload would change the settings.
fn silent() -> SocketAddr {
    static SILENT: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    *SILENT.get_or_init(refusing_address)
}

fn config(mode: Mode, file: &[SocketAddr], discovery: &str) -> String {
    let silent = silent();
    with_mode(
        &format!(
            "[runtime]\nworkers = 2\n[registry]\nsocket = \"SOCKET\"\n\
             [discovery.etcd]\nendpoints = [\"http://{silent}\"]\ndial_timeout = \"100ms\"\n\
             [discovery.dns]\nservers = [\"{silent}\"]\ntimeout = \"100ms\"\n\
             [listeners.web]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
             [listeners.other]\nlisten = \"127.0.0.1:0\"\nservice = \"other\"\n\
             [services.web]\n{}\n{discovery}\n\
             [services.other]\n{}\n",
            endpoint_list(file),
            endpoint_list(file)
        ),
        mode,
    )
}

fn found(addr: SocketAddr, weight: u32, tier: u16) -> Discovered {
    Discovered { addr, weight, tier }
}

fn update(source: Source, scope: Scope, services: &[(&str, Vec<Discovered>)]) -> Update {
    Update {
        source,
        scope,
        services: services
            .iter()
            .map(|(s, l)| (s.to_string(), l.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// `list SERVICE` as (addr, source) pairs.
fn listed(served: &Served, service: &str) -> HashSet<(SocketAddr, String)> {
    let reply = registry(&served.socket(), &format!("list {service}"));
    assert_eq!(reply["ok"], true, "{reply}");
    reply["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["addr"].as_str().unwrap().parse().unwrap(),
                e["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn generation(served: &Served) -> u64 {
    served.server.table().load().generation
}

/// Tags seen over `n` connections.
fn tags(addr: SocketAddr, n: usize) -> HashSet<u8> {
    (0..n).filter_map(|_| tag_of(addr)).collect()
}

per_mode! {
    /// etcd endpoints join the file's, a full resync removes one while a
    /// connection to it stays open and keeps echoing, and a service that
    /// did not opt in never takes them.
    fn it_should_route_to_discovered_endpoints_and_leave_open_connections_alone(mode) {
        let a = tagged_echo_backend(b'A');
        let b = tagged_echo_backend(b'B');
        let c = tagged_echo_backend(b'C');
        let served = Served::start(&config(mode, &[a], "discovery = \"etcd\""));
        let web = served.addr("web");
        let control = served.server.control();
        control.discovered(update(
            Source::Etcd,
            Scope::All,
            &[("web", vec![found(b, 1, 0), found(c, 1, 0)]), ("other", vec![found(b, 1, 0)])],
        ));
        eventually(Duration::from_secs(1), "etcd endpoints listed", || {
            listed(&served, "web").len() == 3
        });
        assert_eq!(
            listed(&served, "web"),
            HashSet::from([
                (a, "file".to_string()),
                (b, "etcd".to_string()),
                (c, "etcd".to_string())
            ])
        );
        assert_eq!(listed(&served, "other"), HashSet::from([(a, "file".to_string())]));
        assert_eq!(tags(web, 12), HashSet::from([b'A', b'B', b'C']));
        assert_eq!(tags(served.addr("other"), 6), HashSet::from([b'A']));

        // An open connection to B, then B leaves in a full resync.
        let mut open = loop {
            let mut s = TcpStream::connect(web).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut tag = [0u8];
            s.read_exact(&mut tag).unwrap();
            if tag[0] == b'B' {
                break s;
            }
        };
        control.discovered(update(Source::Etcd, Scope::All, &[("web", vec![found(c, 1, 0)])]));
        eventually(Duration::from_secs(1), "B gone", || listed(&served, "web").len() == 2);
        assert_eq!(tags(web, 12), HashSet::from([b'A', b'C']));
        open.write_all(b"still here").unwrap();
        let mut echoed = [0u8; 10];
        open.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"still here");
    }
}

#[test]
fn it_should_publish_nothing_for_an_update_that_changes_nothing() {
    let a = tagged_echo_backend(b'A');
    let b = tagged_echo_backend(b'B');
    let served = Served::start(&config(Mode::DEFAULT, &[a], "discovery = \"etcd\""));
    let control = served.server.control();
    let set = || {
        update(
            Source::Etcd,
            Scope::Services,
            &[("web", vec![found(b, 2, 0)])],
        )
    };
    control.discovered(set());
    eventually(Duration::from_secs(1), "b listed", || {
        listed(&served, "web").len() == 2
    });
    let before = generation(&served);
    for _ in 0..20 {
        control.discovered(set());
    }
    // `list` is answered after every update queued before it.
    assert_eq!(listed(&served, "web").len(), 2);
    assert_eq!(generation(&served), before);
}

#[test]
fn it_should_refuse_to_register_or_deregister_what_etcd_owns() {
    let a = tagged_echo_backend(b'A');
    let b = tagged_echo_backend(b'B');
    let served = Served::start(&config(Mode::DEFAULT, &[a], "discovery = \"etcd\""));
    served.server.control().discovered(update(
        Source::Etcd,
        Scope::All,
        &[("web", vec![found(b, 1, 0)])],
    ));
    eventually(Duration::from_secs(1), "b listed", || {
        listed(&served, "web").len() == 2
    });
    for verb in ["register", "deregister"] {
        let reply = registry(&served.socket(), &format!("{verb} web {b}"));
        assert_eq!(reply["ok"], false, "{reply}");
        let text = reply["error"].as_str().unwrap();
        assert!(text.contains("comes from etcd; change it there"), "{text}");
    }
}

#[test]
fn it_should_fail_over_to_the_next_dns_tier_only_when_the_first_is_gone() {
    let a = tagged_echo_backend(b'A');
    let mut b = Switchable::tagged(b'B');
    let c = tagged_echo_backend(b'C');
    let text = config(
        Mode::DEFAULT,
        &[],
        "discovery = { srv = \"_web._tcp.example.internal\", refresh = \"1h\" }\n\
         [services.web.outlier]\nconsecutive_failures = 1\nbase_ejection = \"30s\"\n\
         max_ejection_percent = 100\n",
    )
    .replace(&endpoint_list(&[]), "");
    let served = Served::start(&text);
    let web = served.addr("web");
    served.server.control().discovered(update(
        Source::Dns,
        Scope::Services,
        &[(
            "web",
            vec![found(b.addr, 1, 0), found(a, 1, 1), found(c, 1, 1)],
        )],
    ));
    eventually(Duration::from_secs(1), "dns endpoints listed", || {
        listed(&served, "web").len() == 3
    });
    assert_eq!(tags(web, 10), HashSet::from([b'B']));
    // Tier 0 stops answering: its connect fails once, it is ejected, and
    // the same client fails over to tier 1.
    b.stop();
    assert_eq!(tags(web, 10), HashSet::from([b'A', b'C']));
    b.restart();
    let ejected = served.server.table().load().services["web"]
        .member(b.addr)
        .unwrap()
        .state();
    assert_eq!(ejected.label(), "ejected");
}

#[test]
fn it_should_drop_and_restore_etcd_endpoints_when_a_reload_toggles_discovery() {
    let a = tagged_echo_backend(b'A');
    let b = tagged_echo_backend(b'B');
    let served = Served::start(&config(Mode::DEFAULT, &[a], "discovery = \"etcd\""));
    served.server.control().discovered(update(
        Source::Etcd,
        Scope::All,
        &[("web", vec![found(b, 1, 0)])],
    ));
    eventually(Duration::from_secs(1), "b listed", || {
        listed(&served, "web").len() == 2
    });
    served.write(&config(Mode::DEFAULT, &[a], ""));
    served.wait_for_reloads(1);
    assert_eq!(
        listed(&served, "web"),
        HashSet::from([(a, "file".to_string())])
    );
    served.write(&config(Mode::DEFAULT, &[a], "discovery = \"etcd\""));
    served.wait_for_reloads(2);
    assert_eq!(
        listed(&served, "web"),
        HashSet::from([(a, "file".to_string()), (b, "etcd".to_string())])
    );
}

#[test]
fn it_should_skip_a_discovered_address_that_loops_or_cannot_be_connected_to() {
    let a = tagged_echo_backend(b'A');
    let b = tagged_echo_backend(b'B');
    let served = Served::start(&config(Mode::DEFAULT, &[a], "discovery = \"etcd\""));
    let own = served.addr("other");
    let multicast: SocketAddr = "224.0.0.1:80".parse().unwrap();
    served.server.control().discovered(update(
        Source::Etcd,
        Scope::All,
        &[(
            "web",
            vec![found(own, 1, 0), found(multicast, 1, 0), found(b, 1, 0)],
        )],
    ));
    eventually(Duration::from_secs(1), "b listed", || {
        listed(&served, "web").len() == 2
    });
    assert_eq!(
        listed(&served, "web"),
        HashSet::from([(a, "file".to_string()), (b, "etcd".to_string())])
    );
}
