//! A/B: the classifier built from this tree against another build of the kernel program
//! (`--ab-object`), both loaded in this process with the same config and run in alternating
//! rounds. A change to the kernel path is measured against its base in one run: across runs
//! this machine drifts more than most such changes move (the README's findings follow the
//! floors from run to run).
//!
//! The other object is loaded by this tree's loader, so it must share this tree's maps,
//! globals and `profile_stop` numbers: a build of a nearby commit. A map whose layout differs
//! fails to load; a renumbered stop would silently measure another point. To compare the
//! working tree with commit BASE:
//! ```text
//! git worktree add /tmp/base BASE && (cd /tmp/base && cargo xtask build-ebpf)
//! cp /tmp/base/target/ebpf/bpfel-unknown-none/release/sni-ebpf /tmp/base.o
//! cargo xtask bench -- --only ab --ab-object /tmp/base.o
//! ```

use std::{
    hash::{DefaultHasher, Hasher},
    path::Path,
};

use anyhow::{Context, Result};
use sni_common::maps::profile_stop as stop;
use sni_tests::{frame::PSH_ACK, prog::Prog};
use sni_user::kernel::loader::StartOptions;

use super::{
    app_data, bench_hellos, config, config_ja4_off, hot_frames, row, seg, Base, NewFlows, Pair,
    Pinned, Runs, CPU,
};
use crate::report::Row;

/// Runs the A/B cases; returns the rows and notes naming the other build and the
/// ClientHellos.
pub fn run(other: &Path, quick: bool) -> Result<(Vec<Row>, Vec<String>)> {
    let _pinned = Pinned::to(CPU)?;
    let bytes = std::fs::read(other).with_context(|| format!("reading {}", other.display()))?;
    let mut h = DefaultHasher::new();
    h.write(&bytes);
    let note = format!(
        "A/B: `sni` is the classifier built from this tree, the baseline the object {} ({} bytes, hash {:016x}), both with the xdp section's config (`ja4 = false` where a row says fingerprinting off)",
        other.display(),
        bytes.len(),
        h.finish()
    );
    // Loaded once per case, for the life of the process.
    let object: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let runs = Runs::new(quick);
    let (hello, _, hellos_note) = bench_hellos();
    let (hello_frame, data_frame) = hot_frames(&hello, &app_data(1400));
    let ja4_off = config_ja4_off();
    let both = |config: &str, profile_stop: u8| {
        let load = |object| {
            Prog::with_options(
                config,
                StartOptions {
                    profile_stop,
                    object,
                    ..StartOptions::default()
                },
            )
        };
        (load(None), load(Some(object)))
    };
    let mut rows = Vec::new();
    let mut push = |case: String, runs: (Vec<f64>, Vec<f64>), how: &str| {
        // This build against the other, not against the no-op.
        let r = Row {
            section: "ab",
            baseline_name: "the other build",
            ..row(case, runs, None, how)
        };
        super::print_row(&r);
        rows.push(r);
    };
    for (config, what) in [(config(), ""), (ja4_off, ", fingerprinting off")] {
        let (ours, theirs) = both(&config, stop::HELLO);
        let pair = Pair {
            prog: &ours,
            base: Base::Classifier(&theirs),
        };
        push(
            format!(
                "A/B: the same ClientHello ({} B) again and again, stopped after reading it{what}",
                hello.len()
            ),
            pair.looped(&hello_frame, runs.reps)?,
            &runs.loop_how,
        );
    }
    let (ours, theirs) = both(&config(), stop::NONE);
    ours.run(&hello_frame);
    theirs.run(&hello_frame);
    let pair = Pair {
        prog: &ours,
        base: Base::Classifier(&theirs),
    };
    push(
        "A/B: classified flow, one hot flow: 1,400 B TLS record".to_owned(),
        pair.looped(&data_frame, runs.reps)?,
        &runs.loop_how,
    );
    let one = NewFlows {
        template: seg(0, 443, 1, PSH_ACK, &hello),
        base: 1 << 20,
        before: None,
    };
    push(
        format!(
            "A/B: ClientHello with SNI in its first segment ({} B), a new flow each, on a table not filled first",
            hello.len()
        ),
        pair.per_call(&one, runs.calls)?,
        &runs.call_how("a new flow each"),
    );
    Ok((rows, vec![note, hellos_note]))
}
