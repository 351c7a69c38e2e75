//! Round robin across all workers together follows the weights.

mod common;

use common::*;

#[test]
fn it_should_split_400_connections_1_to_3_within_2_percent() {
    let (a, b) = (named_backend("a"), named_backend("b"));
    let proxy = start_proxy(&config_text(&[(a, 1), (b, 3)], "balance = \"round_robin\""));
    let mut counts = [0; 2];
    for _ in 0..400 {
        match read_all(&mut connect(&proxy)).as_str() {
            "a" => counts[0] += 1,
            "b" => counts[1] += 1,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!((98..=102).contains(&counts[0]), "{counts:?}");
    assert!((294..=306).contains(&counts[1]), "{counts:?}");
}

#[test]
fn it_should_split_random_by_weight_too() {
    let (a, b) = (named_backend("a"), named_backend("b"));
    let proxy = start_proxy(&config_text(&[(a, 1), (b, 3)], "balance = \"random\""));
    let mut a_count = 0;
    for _ in 0..400 {
        if read_all(&mut connect(&proxy)) == "a" {
            a_count += 1;
        }
    }
    // Binomial(400, 0.25): mean 100, sd 8.7; ±40 is over four sd.
    assert!((60..=140).contains(&a_count), "{a_count}");
}

/// 20,000 endpoints of weights 1 to 256 in one round-robin service: the
/// table builds, and rebuilds from itself as a reload does, within 2 s even
/// in a debug build (the precomputed schedule it replaced took O(endpoints
/// × total weight), hours for this service), and picks reach every part of
/// the list.
#[test]
fn it_should_build_a_20000_endpoint_weighted_round_robin_table_within_2_seconds() {
    let endpoints: Vec<String> = (0..20_000u32)
        .map(|i| {
            let addr = std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::from(0x7f01_0000 + i / 1000),
                10_000 + (i % 1000) as u16,
            );
            format!("{{ addr = \"{addr}\", weight = {} }}", 1 + i % 256)
        })
        .collect();
    let text = format!(
        "[listeners.l]\nlisten = \"127.0.0.1:0\"\nservice = \"s\"\n[services.s]\n\
         balance = \"round_robin\"\nendpoints = [\n{}\n]\n",
        endpoints.join(",\n")
    );
    let config = l4mesh::Config::parse(&text, std::path::Path::new("big.toml")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let regs = l4mesh::routing::ConfigOnly;
        let first = l4mesh::routing::Snapshot::build(&config, &regs, None);
        let mut changed = config.clone();
        changed.services[0].endpoints[0].weight = 7;
        let second = l4mesh::routing::Snapshot::build(&changed, &regs, Some(&first));
        let _ = tx.send(second);
    });
    let snapshot = rx
        .recv_timeout(std::time::Duration::from_secs(2))
        .expect("building and rebuilding 20,000 endpoints took over 2 s");
    let service = snapshot.route("l").unwrap();
    assert_eq!(service.members.len(), 20_000);
    let client = "127.0.0.1".parse().unwrap();
    let picked: std::collections::HashSet<usize> = (0..100_000)
        .map(|_| service.choose(client, false, &|_| false).unwrap().index)
        .collect();
    assert!(
        picked.iter().any(|&i| i < 1000) && picked.iter().any(|&i| i >= 19_000),
        "picks reach both ends of the list"
    );
}
