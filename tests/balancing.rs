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
