//! How many parser steps the bench's ClientHellos take (`Parser::step`; the kernel runs one
//! per `bpf_loop` call). Reading a ClientHello costs about the same per step whatever the step
//! reads (the README's profile), so a change that adds steps shows here before the bench.

use sni_common::Parser;
use sni_tests::hellos::{bench_hellos, extension_types, fixed_order, rustls_hello};

/// Steps `Parser::step` takes over `hello` in one buffer until the parser wants no more
/// (its end with JA4, its name without).
fn steps(ja4: bool, hello: &[u8]) -> usize {
    let mut p = Parser::new(ja4);
    let mut pos = 0;
    let mut n = 0;
    while p.wants_more() && n < Parser::max_steps(hello.len()) && p.step(hello, &mut pos) {
        n += 1;
    }
    assert!(
        !p.wants_more(),
        "the parser read all it wants of the ClientHello"
    );
    assert!(p.has_name(), "the name was read");
    n
}

#[test]
fn the_bench_client_hellos_take_the_steps_they_took_when_measured() {
    let (hello, browser) = bench_hellos();
    // 27 and 15 before the fixed fields and the lengths in front of a list's first value were
    // read straight through (`Parser::leap`); 33 and 19 before steps passed over the
    // extensions read no further. Browser-size: 26 and 16; 34 and 24.
    assert_eq!(steps(true, &hello), 15, "rustls, to its end with JA4");
    assert_eq!(steps(false, &hello), 4, "rustls, to its name");
    assert_eq!(
        steps(true, &browser),
        14,
        "browser-size, to its end with JA4"
    );
    assert_eq!(steps(false, &browser), 5, "browser-size, to its name");
}

#[test]
fn where_the_name_is_moves_the_steps_to_it_by_two_at_most() {
    // rustls shuffles its extensions for every ClientHello (the bench fixes their order).
    // Before steps passed over the extensions read no further, each extension ahead of the
    // name took a step; now up to four take one. (14, 15, 15 before the fixed fields were
    // read straight through.) The name's own steps: the lengths in front of it leapt, then
    // eight of its bytes a step.
    let hello = rustls_hello("host1.bench.test");
    let n = extension_types(&hello).len();
    let counts: Vec<usize> = [0, n / 2, usize::MAX]
        .iter()
        .map(|&at| steps(false, &fixed_order(&hello, at)))
        .collect();
    assert_eq!(counts, [3, 4, 5], "the name first, in the middle, last");
}
