//! The flow table (`BPF_PROG_TEST_RUN`): it holds as many flows as `flows_capacity` says, and
//! a new flow takes the entry that holds its key, else an empty one of the bucket with more of
//! them, else the one used longest ago (written, or found by a packet its core's cache did not
//! hold), of its two buckets. (What two CPUs racing on one entry do, a test run from one
//! thread cannot make happen.)

use std::{collections::HashMap, thread::sleep, time::Duration};

use sni_common::flow::FlowKey;
use sni_tests::{
    frame,
    prog::{data_frame, hello_frame, pin, v4_key, Prog, XDP_PASS},
    Rng,
};

const PORT: u16 = 443;
const NAME: &str = "a.example.org";

fn prog(flows: u32) -> Prog {
    Prog::with_config(&format!(
        "[xdp]\ninterfaces = [\"lo\"]\nports = [{PORT}]\nflows_capacity = {flows}\n\
         [[host]]\nnames = [\"a.example.org\"]\n"
    ))
}

/// The ClientHello of a new flow from client port `port`.
fn hello(port: u16) -> Vec<u8> {
    hello_frame(port, PORT, 1, NAME).0
}

/// A data record of the flow from client port `port`, after its ClientHello.
fn data(port: u16) -> Vec<u8> {
    data_frame(port, PORT, hello_frame(port, PORT, 1, NAME).1)
}

#[test]
fn the_table_holds_as_many_flows_as_its_capacity() {
    const FLOWS: u32 = 4096;
    let prog = prog(FLOWS);
    // Clients at random addresses and ports (a fixed seed): consecutive ports alone would
    // spread over the buckets more evenly than real clients do.
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let keys: Vec<FlowKey> = (0..FLOWS)
        .map(|_| {
            let x = rng.next_u64();
            let mut key = v4_key(x as u16 | 1024, PORT);
            key.src[..4].copy_from_slice(&((x >> 16) as u32).to_be_bytes());
            key
        })
        .collect();
    for key in &keys {
        let mut f = hello(key.src_port);
        let mut src = [0; 4];
        src.copy_from_slice(&key.src[..4]);
        frame::set_v4_src(&mut f, src);
        assert_eq!(prog.run(&f), XDP_PASS);
    }
    let table = prog.flow_table();
    let kept = keys.iter().filter(|k| table.get(k).is_some()).count();
    // A flow goes early only where both its buckets filled: simulated with random buckets,
    // one of 4,096 lost in about one run of 7, never more than 2 in 20 runs (and 14 on
    // average if a new flow took the first bucket's empty ways before the second's).
    assert!(
        kept + 4 >= FLOWS as usize,
        "{kept} of {FLOWS} flows kept ({:?})",
        prog.flow_table().shape()
    );
    assert_eq!(prog.checked_flows(), kept);
    assert_eq!(prog.global()["sni"], u64::from(FLOWS));
}

#[test]
fn a_new_flow_takes_an_empty_way_of_its_emptier_bucket() {
    // `flows_capacity = 1`: two buckets of four ways.
    let prog = prog(1);
    let table = prog.flow_table();
    let shape = table.shape();
    let place = |port: u16| shape.place(&v4_key(port, PORT).words()).buckets;
    let mut ports = (0..).map(|_| frame::next_port());
    let mut pick = |want: [u32; 2]| ports.by_ref().find(|&p| place(p) == want).expect("a port");
    let bucket_of = |port: u16| {
        let (index, _) = table
            .find(&v4_key(port, PORT))
            .expect("the flow was remembered");
        index / sni_common::flow_table::WAYS
    };
    // Both empty: the first bucket. Then the second, which has more empty ways; then, the
    // two even again, the first bucket of a flow whose buckets come the other way round.
    let first = pick([0, 1]);
    assert_eq!(prog.run(&hello(first)), XDP_PASS);
    assert_eq!(bucket_of(first), 0);
    let second = pick([0, 1]);
    assert_eq!(prog.run(&hello(second)), XDP_PASS);
    assert_eq!(bucket_of(second), 1);
    let third = pick([1, 0]);
    assert_eq!(prog.run(&hello(third)), XDP_PASS);
    assert_eq!(bucket_of(third), 1);
}

#[test]
fn a_new_flow_takes_an_empty_entry_else_the_one_used_longest_ago_of_its_two_buckets() {
    // `flows_capacity = 1`: eight entries, two buckets, so every flow's buckets are full
    // after a few. New flows come on core 0, where each is cached; every third round, a
    // packet of the oldest flow not seen on core 1 yet comes on core 1, whose cache does not
    // hold it: found in the table, it counts as used then (and is cached on core 1).
    let prog = prog(1);
    let table = prog.flow_table();
    assert_eq!(table.flows().count(), 0);
    // When each flow (by client port) was last written or used, in ticks: 2 × its round.
    let mut used: HashMap<u16, usize> = HashMap::new();
    let mut replaced = 0;
    let mut touched: Vec<u16> = Vec::new();
    for rank in 0..24 {
        if rank % 3 == 2 {
            let oldest = table
                .flows()
                .filter_map(|(_, e)| e.flow_key())
                .filter(|k| !touched.contains(&k.src_port))
                .min_by_key(|k| used[&k.src_port])
                .expect("flows in the table");
            pin(1);
            assert_eq!(prog.run(&data(oldest.src_port)), XDP_PASS);
            used.insert(oldest.src_port, 2 * rank - 1);
            touched.push(oldest.src_port);
            sleep(Duration::from_millis(40));
        }
        pin(0);
        let port = frame::next_port();
        let key = v4_key(port, PORT);
        let mut candidates: Vec<u32> = table.shape().place(&key.words()).entries().collect();
        candidates.sort_unstable();
        candidates.dedup();
        let before: HashMap<u32, Option<u16>> = candidates
            .iter()
            .map(|&i| {
                let entry = table.entry(i).expect("entry");
                (i, entry.flow_key().map(|k| k.src_port))
            })
            .collect();
        assert_eq!(prog.run(&hello(port)), XDP_PASS);
        let (landed, _) = table.find(&key).expect("a new flow always gets an entry");
        assert!(
            candidates.contains(&landed),
            "{landed} is not one of {candidates:?}"
        );
        let empty = candidates.iter().find(|i| before[i].is_none());
        match (before[&landed], empty) {
            (None, _) => {}
            (Some(old), None) => {
                let oldest = before
                    .values()
                    .flatten()
                    .min_by_key(|p| used[p])
                    .expect("full buckets");
                assert_eq!(
                    old, *oldest,
                    "flow {rank} took the entry of a flow used later"
                );
                replaced += 1;
            }
            (Some(old), Some(empty)) => {
                panic!("flow {rank} replaced the flow of port {old} while entry {empty} was empty")
            }
        }
        used.insert(port, 2 * rank);
        // Stamps count 16.8 ms; the coarse clock moves in steps of a jiffy, 10 ms at most.
        sleep(Duration::from_millis(40));
    }
    assert!(
        replaced >= 10,
        "only {replaced} flows found their buckets full"
    );
    assert_eq!(table.flows().count(), 8);
}
