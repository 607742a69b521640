//! `sni-user top` on a real edge: two network namespaces joined by a veth pair, `sni-user run`
//! with the classifier on the server side's veth and the terminator behind it, curl sending
//! ClientHellos for two configured hosts and two other names from the client side. `top` runs
//! in a detached tmux session of fixed size; its screen, captured with `tmux capture-pane`,
//! must show what `sni-user stats --json` says, follow the sort and filter keys, say so when
//! the edge stops, and give the terminal back (normal screen, cooked mode) when it quits.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sni_tests::{
    edge::{Edge, Setup},
    host,
    netns::{run, unique, wait_until},
    sni_user_bin,
};

const WIDTH: u16 = 160;
const HEIGHT: u16 = 40;

/// The edge: two hosts, two other names under a wildcard the certificate covers.
fn edge() -> Edge {
    Edge::start(
        Setup {
            pin_prefix: "sni-top-",
            names: vec!["alpha.test", "beta.test", "*.other.test"],
            ..Setup::default()
        },
        "[[host]]\nnames = [\"alpha.test\"]\ncert = CERT\nkey = KEY\nbackend = \"builtin\"\n\
         [[host]]\nnames = [\"beta.test\"]\ncert = CERT\nkey = KEY\nbackend = \"builtin\"\n",
    )
}

/// One connection with curl from the client side: one ClientHello naming `name`.
fn curl(edge: &Edge, name: &str) {
    let out = edge.curl(name);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains("reached host"), "{name}: {page} {out:?}");
}

/// A tmux server of its own (`-L`, no user config) with one detached session of fixed size;
/// the session and the server are killed on drop, whatever the test did.
struct Tmux {
    socket: String,
    session: String,
    /// The server's socket file (kill-server leaves it behind).
    socket_path: Option<PathBuf>,
}

impl Tmux {
    /// Runs `command` (a shell command line) in a new detached session.
    fn start(command: &str) -> Self {
        let version = Command::new("tmux").arg("-V").output();
        assert!(
            version.as_ref().is_ok_and(|o| o.status.success()),
            "tmux is missing ({version:?}): this test drives `sni-user top` in a tmux session; \
             install it (apt-get install tmux)"
        );
        let mut tmux = Self {
            socket: unique("snitop"),
            session: unique("top"),
            socket_path: None,
        };
        run(tmux
            .cmd()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", &tmux.session])
            .args(["-x", &WIDTH.to_string(), "-y", &HEIGHT.to_string()])
            .arg(command)
            // The pane inherits the server's environment: UTF-8 for the sparklines.
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm-256color"));
        tmux.socket_path = Some(PathBuf::from(tmux.display("#{socket_path}")));
        tmux
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]).stdin(Stdio::null());
        c
    }

    /// The visible screen of the pane, one line per row.
    fn capture(&self) -> String {
        let out = run(self.cmd().args(["capture-pane", "-p", "-t", &self.session]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends keys (tmux key names, or literal text with `-l`).
    fn send(&self, keys: &[&str]) {
        run(self
            .cmd()
            .args(["send-keys", "-t", &self.session])
            .args(keys));
    }

    /// A tmux format of the pane (`#{alternate_on}`, …).
    fn display(&self, format: &str) -> String {
        let out = run(self
            .cmd()
            .args(["display-message", "-p", "-t", &self.session, format]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits (10 s at most) until `check` holds on the screen; panics with the screen.
    fn wait_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut screen = String::new();
        let ok = wait_until(Duration::from_secs(10), || {
            screen = self.capture();
            check(&screen)
        });
        assert!(ok, "{what}; the screen:\n{screen}");
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["kill-session", "-t", &self.session])
            .stderr(Stdio::null())
            .status();
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The table rows of a screen, in order: the columns of each line whose first word is a host
/// (HOST KIND HELLOS/S HELLOS DROPS/S RATELIM/S HS-FAIL FAIL/S ACTIVE, then the sparkline).
fn rows(screen: &str) -> Vec<Vec<&str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| {
            w.len() >= 9
                && (w[0].ends_with(".test") || w[0] == "default")
                && ["config", "other", "default"].contains(&w[1])
        })
        .collect()
}

fn row<'a>(screen: &'a str, name: &str) -> Option<Vec<&'a str>> {
    rows(screen).into_iter().find(|w| w[0] == name)
}

fn names(screen: &str) -> Vec<&str> {
    rows(screen).into_iter().map(|w| w[0]).collect()
}

/// Whether the screen's totals for the classifier's hosts and the terminator's are those of
/// `stats` (`stats --json`), or why not.
fn agrees(screen: &str, stats: &Value) -> Result<(), String> {
    for h in stats["hosts"].as_array().unwrap() {
        let name = h["host"].as_str().unwrap();
        let w = row(screen, name).ok_or(format!("no row for {name}"))?;
        let kind = if h["configured"] == true {
            "config"
        } else {
            "other"
        };
        if w[1] != kind || w[3].parse().ok() != h["client_hellos"].as_u64() {
            return Err(format!("{name}: {w:?} against {h}"));
        }
    }
    for h in stats["terminator"]["hosts"].as_array().unwrap() {
        let name = h["host"].as_str().unwrap();
        let w = row(screen, name).ok_or(format!("no row for {name}"))?;
        let failures: u64 = h["failures"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        if w[6].parse() != Ok(failures) || w[8].parse().ok() != h["active"].as_u64() {
            return Err(format!("{name}: {w:?} against {h}"));
        }
    }
    Ok(())
}

#[test]
fn top_shows_the_counters_sorts_filters_and_restores_the_terminal() {
    let mut edge = edge();
    for (name, n) in [
        ("alpha.test", 5),
        ("beta.test", 3),
        ("one.other.test", 2),
        ("two.other.test", 1),
    ] {
        for _ in 0..n {
            curl(&edge, name);
        }
    }
    let s = edge.settled();
    assert_eq!(host(&s, "alpha.test")["client_hellos"], 5, "{s}");
    assert_eq!(host(&s, "two.other.test")["client_hellos"], 1, "{s}");
    assert_eq!(host(&s, "two.other.test")["configured"], false, "{s}");

    // Two runs of top, one after the other: the first (its PID in a file) is ended by
    // SIGTERM, the second quits on q; after each, the shell shows the terminal's modes.
    let pid_file = edge.control.with_extension("top.pid");
    let top = format!(
        "'{bin}' top --pin-dir '{pin}' --control '{control}' --interval 0.5",
        bin = sni_user_bin().display(),
        pin = edge.pin_dir.display(),
        control = edge.control.display(),
    );
    let command = format!(
        "sh -c 'echo $$ > {pid_file}; exec \"$@\"' sh {top}; \
         echo TOP1-EXITED=$?; stty -a; echo STTY1-DONE; read -r _; \
         {top}; echo TOP2-EXITED=$?; stty -a; echo STTY2-DONE; exec sleep 300",
        pid_file = pid_file.display(),
    );
    let tmux = Tmux::start(&command);

    // The hosts, busiest first (no traffic now: by total), and the same totals as `stats`.
    let screen = tmux.wait_screen("top did not show the hosts", |s| {
        agrees(s, &edge.stats()).is_ok()
    });
    eprintln!("top, first screen:\n{screen}");
    assert!(screen.contains("ClientHellos/s"), "{screen}");
    assert_eq!(
        names(&screen),
        [
            "alpha.test",
            "beta.test",
            "one.other.test",
            "two.other.test",
            "default"
        ],
        "{screen}"
    );
    let alpha = row(&screen, "alpha.test").unwrap();
    assert_eq!(alpha[1..4], ["config", "0.0", "5"], "{screen}");
    let default = row(&screen, "default").unwrap();
    assert_eq!(default[1..4], ["default", "-", "-"], "{screen}");

    // Traffic while it watches: beta's ClientHellos/s rises, and its sparkline with it.
    let mut screen = String::new();
    let busy = wait_until(Duration::from_secs(30), || {
        curl(&edge, "beta.test");
        curl(&edge, "beta.test");
        screen = tmux.capture();
        // A rate above 0, and a sparkline after the columns.
        row(&screen, "beta.test")
            .is_some_and(|w| w[2].parse::<f64>().is_ok_and(|r| r > 0.0) && w.len() > 9)
    });
    assert!(busy, "no ClientHellos/s for beta.test:\n{screen}");
    eprintln!("top, while curl runs:\n{screen}");
    let beta = screen.lines().find(|l| l.starts_with("beta.test")).unwrap();
    assert!(
        beta.chars().any(|c| ('▁'..='█').contains(&c)),
        "no sparkline: {beta}"
    );
    // Once the connections are closed, totals are still those of `stats`.
    let s = edge.settled();
    tmux.wait_screen("top's totals differ from stats", |screen| {
        agrees(screen, &s).is_ok()
    });

    // n: by name.
    tmux.send(&["n"]);
    let screen = tmux.wait_screen("n did not sort by name", |s| {
        s.contains("sort: name")
            && names(s)
                == [
                    "alpha.test",
                    "beta.test",
                    "default",
                    "one.other.test",
                    "two.other.test",
                ]
    });
    eprintln!("top, by name:\n{screen}");

    // o: other hosts hidden, then shown again.
    tmux.send(&["o"]);
    tmux.wait_screen("o did not hide the other hosts", |s| {
        names(s) == ["alpha.test", "beta.test", "default"]
    });
    tmux.send(&["o"]);
    tmux.wait_screen("o did not show the other hosts again", |s| {
        names(s).len() == 5
    });

    // A filter: typed after /, kept with Enter.
    tmux.send(&["/"]);
    tmux.send(&["-l", "one"]);
    tmux.send(&["Enter"]);
    let screen = tmux.wait_screen("the filter did not apply", |s| {
        // The footer is the keys again: Enter ended the typing.
        names(s) == ["one.other.test"] && s.contains("filter: \"one\"") && !s.contains("Enter keep")
    });
    assert!(agrees(&screen, &s).is_err(), "other rows still there");
    eprintln!("top, filtered:\n{screen}");

    // SIGTERM (as from `kill` or a closing session manager): it exits with 0 and gives the
    // terminal back, as on q.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let screen = tmux.wait_screen("top did not exit on SIGTERM", |s| s.contains("STTY1-DONE"));
    assert!(screen.contains("TOP1-EXITED=0"), "{screen}");
    assert_restored(&tmux, &screen, "TOP1-EXITED", "STTY1-DONE");

    // The second top, on the same edge.
    tmux.send(&["Enter"]);
    tmux.wait_screen("the second top did not show the hosts", |s| {
        agrees(s, &edge.stats()).is_ok()
    });

    // The edge stops: top says so and keeps the last read on screen, retrying.
    let status = edge.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "sni-user run: {status:?}"
    );
    let screen = tmux.wait_screen("no read error shown", |s| {
        s.contains("read failed, retrying") && s.contains("cannot open") && names(s).len() == 5
    });
    eprintln!("top, the edge stopped:\n{screen}");

    // q: it exits with 0 and gives the terminal back.
    tmux.send(&["q"]);
    let screen = tmux.wait_screen("top did not exit on q", |s| s.contains("STTY2-DONE"));
    assert!(screen.contains("TOP2-EXITED=0"), "{screen}");
    assert_restored(&tmux, &screen, "TOP2-EXITED", "STTY2-DONE");
}

/// After top exited: the normal screen, no table left on it, and `stty -a` (printed between
/// `from` and `to`) shows canonical mode, echo and signals back on.
fn assert_restored(tmux: &Tmux, screen: &str, from: &str, to: &str) {
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "still on the alternate screen:\n{screen}"
    );
    assert!(!screen.contains("HELLOS/S"), "the table stayed:\n{screen}");
    let start = screen.find(from).unwrap();
    let end = screen.find(to).unwrap();
    let words: Vec<&str> = screen[start..end].split_whitespace().collect();
    for flag in ["icanon", "echo", "isig"] {
        assert!(
            words.contains(&flag) && !words.contains(&format!("-{flag}").as_str()),
            "terminal not restored ({flag}):\n{screen}"
        );
    }
}
