//! Each core's flow cache in front of the flow table (`BPF_PROG_TEST_RUN` on each core in
//! turn): a cached copy never outlives a reload that changes its flow, nor a new connection
//! on the same 5-tuple, on whichever core the copy was made; and what its entries count is
//! neither lost nor counted twice when they go to other flows.

use std::collections::{HashMap, HashSet};

use aya::maps::Array;
use sni_common::{
    maps::{HostStats, MAP_HOST_STATS},
    HostKey,
};
use sni_tests::{
    frame::{self, Seg, SYN},
    prog::{self, pin, v4_key, Prog, XDP_DROP, XDP_PASS},
};
use sni_user::kernel::loader::{configured_slot, reset_slots, rewrite_flows, ActionChanges};

const PORT: u16 = 443;
const ISN: u32 = 1000;

fn hello_frame(port: u16, name: &str) -> (Vec<u8>, u32) {
    prog::hello_frame(port, PORT, ISN, name)
}

fn data_frame(port: u16, seq: u32) -> Vec<u8> {
    prog::data_frame(port, PORT, seq)
}

/// A classified flow on `cpu`, its copy cached there by its second packet; the data frame.
fn classified_on(prog: &Prog, cpu: usize, name: &str) -> Vec<u8> {
    connection(prog, cpu, frame::next_port(), name, 2)
}

/// On `cpu`, a connection from client port `port` to `name`: its ClientHello, then `packets`
/// data packets (from the second on, from this core's cache); the data frame.
fn connection(prog: &Prog, cpu: usize, port: u16, name: &str, packets: usize) -> Vec<u8> {
    pin(cpu);
    let (hello, next) = hello_frame(port, name);
    assert_eq!(prog.run(&hello), XDP_PASS);
    let data = data_frame(port, next);
    for _ in 0..packets {
        assert_eq!(prog.run(&data), XDP_PASS);
    }
    data
}

/// On `cpu`, the SYN of the next connection from client port `port`.
fn syn_on(prog: &Prog, cpu: usize, port: u16) {
    pin(cpu);
    let syn = frame::v4_segment(
        &Seg {
            src_port: port,
            dst_port: PORT,
            seq: ISN - 1,
            flags: SYN,
        },
        &[],
    );
    assert_eq!(prog.run(&syn), XDP_PASS);
}

#[test]
fn a_reload_that_drops_a_host_drops_its_cached_flows_on_every_core() {
    let mut prog = Prog::load(&[PORT], &["keep.example.org", "gone.example.org"], 1024);
    let gone: Vec<(usize, Vec<u8>)> = [0, 1]
        .into_iter()
        .map(|cpu| (cpu, classified_on(&prog, cpu, "gone.example.org")))
        .collect();
    let kept = classified_on(&prog, 0, "keep.example.org");
    let before = prog.host("gone.example.org").unwrap().0;
    assert_eq!((before.client_hellos, before.packets), (2, 6));

    // What `sni-user reload` does to classified flows when gone.example.org (slot 2) turns
    // to `action = "drop"`.
    let changed = ActionChanges {
        hosts: HashSet::from([2]),
        host_drops: HashSet::from([2]),
        ..ActionChanges::default()
    };
    let rewritten = rewrite_flows(prog.ebpf_mut(), &changed, &[]).unwrap();
    assert_eq!(rewritten, 2);

    for (cpu, data) in &gone {
        pin(*cpu);
        assert_eq!(
            prog.run(data),
            XDP_DROP,
            "core {cpu}'s copy was made before the reload"
        );
    }
    pin(0);
    assert_eq!(
        prog.run(&kept),
        XDP_PASS,
        "another host's flow is untouched"
    );
    let after = prog.host("gone.example.org").unwrap().0;
    assert_eq!((after.packets, after.dropped), (8, 2));
    assert_eq!(prog.global()["dropped"], 2);

    // And back to pass: the flows pass again, the next packet cached again.
    let changed = ActionChanges {
        hosts: HashSet::from([2]),
        ..ActionChanges::default()
    };
    assert_eq!(rewrite_flows(prog.ebpf_mut(), &changed, &[]).unwrap(), 2);
    for (cpu, data) in &gone {
        pin(*cpu);
        assert_eq!(prog.run(data), XDP_PASS);
        assert_eq!(prog.run(data), XDP_PASS);
    }
    assert_eq!(prog.host("gone.example.org").unwrap().0.packets, 12);
}

#[test]
fn a_syn_on_another_core_forgets_every_core_s_copy() {
    let prog = Prog::load(&[PORT], &["first.example.org", "second.example.org"], 1024);
    let port = frame::next_port();
    connection(&prog, 0, port, "first.example.org", 2);
    // The 5-tuple's next connection starts on the other core...
    syn_on(&prog, 1, port);
    // ...and goes on on the first one, whose copy of the old flow must be gone: its
    // ClientHello is read (not counted as a packet of the old flow), and its data counts
    // toward its own host.
    connection(&prog, 0, port, "second.example.org", 1);
    let first = prog.host("first.example.org").unwrap().0;
    let second = prog.host("second.example.org").unwrap().0;
    assert_eq!((first.client_hellos, first.packets), (1, 3));
    assert_eq!((second.client_hellos, second.packets), (1, 2));
    assert_eq!(prog.global()["sni"], 2);
}

#[test]
fn a_new_connection_is_read_even_where_a_copy_outlived_its_flow_in_the_table() {
    let mut prog = Prog::load(&[PORT], &["first.example.org", "second.example.org"], 1024);
    let port = frame::next_port();
    connection(&prog, 0, port, "first.example.org", 2);
    // The table forgets the flow (as it does when a new flow takes its entry) while core 0
    // keeps its copy.
    prog.evict_flow(&v4_key(port, PORT));
    // The next connection on the 5-tuple: its SYN on core 1 finds nothing in the table, so it
    // clears no other core's copy, and the copy on core 0 must not swallow the new
    // ClientHello there.
    syn_on(&prog, 1, port);
    connection(&prog, 0, port, "second.example.org", 1);
    let second = prog.host("second.example.org").unwrap().0;
    assert_eq!((second.client_hellos, second.packets), (1, 2));
    assert_eq!(prog.host("first.example.org").unwrap().0.packets, 3);
}

#[test]
fn counts_stay_exact_when_flows_outnumber_the_cache_on_every_core() {
    // 2,048 flows: 1,024 cache entries per core on 2 cores, the fewest there are. 1,500
    // flows per core then share entries, and each reuse adds what the entry owed its host.
    let mut prog = Prog::with_config(
        "[xdp]\ninterfaces = [\"lo\"]\nports = [443]\nflows_capacity = 2048\n\
         [[host]]\nnames = [\"a.example.org\"]\n[[host]]\nnames = [\"b.example.org\"]\n",
    );
    let mut expected: HashMap<&str, u64> = HashMap::new();
    for i in 0..3000usize {
        let name = if i % 3 == 0 {
            "b.example.org"
        } else {
            "a.example.org"
        };
        let packets = 1 + i % 4;
        connection(&prog, i % 2, frame::next_port(), name, packets);
        *expected.entry(name).or_default() += 1 + packets as u64;
    }
    for (name, packets) in &expected {
        let (stats, configured) = prog.host(name).unwrap();
        assert!(configured);
        assert_eq!(stats.packets, *packets, "{name}: every packet counted once");
    }
    // Most of it went through the shared counters, added by entries given to other flows;
    // the rest is what the entries still hold.
    let key = HostKey::from_name(b"a.example.org").unwrap();
    let slot = configured_slot(prog.ebpf_mut(), &key).unwrap().unwrap();
    let stats: Array<_, HostStats> =
        Array::try_from(prog.ebpf_mut().map(MAP_HOST_STATS).unwrap()).unwrap();
    let folded = stats.get(&slot, 0).unwrap().packets;
    let total = expected["a.example.org"];
    assert!(
        folded > total / 2 && folded < total,
        "a.example.org: {folded} of {total} packets in the shared counters"
    );
}

#[test]
fn a_slot_given_to_a_new_host_starts_from_nothing_on_every_core() {
    let mut prog = Prog::load(&[PORT], &["keep.example.org", "gone.example.org"], 1024);
    for cpu in [0, 1] {
        connection(&prog, cpu, frame::next_port(), "gone.example.org", 3);
    }
    let key = HostKey::from_name(b"gone.example.org").unwrap();
    let slot = configured_slot(prog.ebpf_mut(), &key).unwrap().unwrap();
    assert_eq!(prog.host("gone.example.org").unwrap().0.packets, 8);

    // A reload removes gone.example.org (its flows turn to a name not configured); a later
    // one gives its slot to a new host. The packets both cores' caches still owe the slot
    // were the old host's.
    rewrite_flows(prog.ebpf_mut(), &ActionChanges::default(), &[slot]).unwrap();
    reset_slots(prog.ebpf_mut(), &HashSet::from([slot])).unwrap();
    // (The test keeps the old name in the host table, so it still finds the slot.)
    assert_eq!(
        prog.host("gone.example.org").unwrap().0,
        HostStats::default(),
        "the new host of slot {slot} starts at zero"
    );
    assert_eq!(prog.host("keep.example.org").unwrap().0.packets, 0);
}
