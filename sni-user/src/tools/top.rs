//! `sni-user top`: a live terminal view of a running classifier and its terminator. Every
//! interval it reads the same counters as `sni-user stats` (the pinned maps and the control
//! socket), turns the difference with the previous read into rates, and shows the hosts ranked
//! by ClientHellos per second with drops, rate limits, handshake failures and a sparkline.
//!
//! The counting (rates, resets, history bounds), the ordering and filtering, and the keys are
//! plain functions over [`Snapshot`]s, tested below; only [`run`] touches the terminal.

use std::{
    cmp::Ordering,
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    io::{IsTerminal, Stdout},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc, Once,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute, terminal,
};
use ratatui::{
    backend::CrosstermBackend,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table},
    Frame, Terminal,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};

use crate::{
    kernel::readers::{Monotonic, Snapshot},
    tools::top_fingerprints,
};

/// Samples of ClientHellos/s kept per host for its sparkline: a minute at the default interval.
pub const HISTORY_LEN: usize = 60;
/// Hosts that keep a sparkline history at most. The other-hosts map holds up to 16k names; a
/// screen shows a few dozen, so the busiest 200 (configured ones first) are plenty.
pub const MAX_HISTORY_HOSTS: usize = 200;
/// A host missing from this many successive reads is forgotten (a reload removed it, or the
/// kernel reused its slot); until then it is only hidden.
pub const FORGET_AFTER: u64 = 60;
/// Longest filter accepted from the keyboard (a host name is at most 253 bytes).
const MAX_FILTER: usize = 253;
/// Bounds of `--interval`, in seconds.
const MAX_INTERVAL_SECS: f64 = 60.0;
/// How long a signal may wait before the view ends on it.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

/// Where to read and how often.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pin directory of the running classifier.
    pub pin_dir: PathBuf,
    /// Control socket of the running terminator.
    pub control: PathBuf,
    /// Time between reads.
    pub interval: Duration,
    /// How fingerprints are shown.
    pub view: crate::kernel::fingerprint_rows::View,
}

/// Parses `--interval`: seconds, more than 0 and at most 60.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= MAX_INTERVAL_SECS) {
        return Err(format!(
            "{s}: the interval must be more than 0 and at most {MAX_INTERVAL_SECS} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the view until `q`, Esc or Ctrl-C. Fails before touching the terminal when stdout is
/// not one or when the first read fails (nothing running there); later read errors are shown
/// in the view and retried on every tick.
pub fn run(opts: Options) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("top needs a terminal; use `sni-user stats` for scripts");
    }
    let mut monotonic = Monotonic::default();
    let mut first = Snapshot::read(&opts.pin_dir, &opts.control, &opts.view)?;
    monotonic.apply(&mut first);
    let mut app = App::new(&opts, Instant::now());
    app.update(Instant::now(), &first);
    // SIGTERM, SIGHUP (the terminal went away) and SIGQUIT end the view like `q`, so the
    // terminal is given back; in raw mode Ctrl-C arrives as a key, not as SIGINT.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGHUP, SIGQUIT, SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .with_context(|| format!("signal {sig} handler"))?;
    }
    let guard = TerminalGuard::enter()?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    let result = event_loop(&mut term, &mut app, &mut monotonic, &opts, &stop);
    drop(term);
    drop(guard);
    result
}

fn event_loop(
    term: &mut Terminal<CrosstermBackend<Stdout>>,
    app: &mut App,
    monotonic: &mut Monotonic,
    opts: &Options,
    stop: &AtomicBool,
) -> Result<()> {
    let mut next_read = Instant::now() + opts.interval;
    loop {
        if stop.load(SeqCst) {
            return Ok(());
        }
        term.draw(|frame| app.render(frame))?;
        // Bounded by the interval (at most 60 s) and by the signal check, woken at once by a
        // key. A signal may also interrupt the wait itself.
        let wait = next_read
            .saturating_duration_since(Instant::now())
            .min(SIGNAL_CHECK);
        let ready = match event::poll(wait) {
            Ok(ready) => ready,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
            Err(e) => return Err(e.into()),
        };
        if ready {
            if let Event::Key(key) = event::read()? {
                if app.on_key(key) == Action::Quit {
                    return Ok(());
                }
            }
            // Anything else (a resize) only needs the redraw at the top of the loop.
        }
        let now = Instant::now();
        if now >= next_read {
            match Snapshot::read(&opts.pin_dir, &opts.control, &opts.view) {
                Ok(mut snapshot) => {
                    monotonic.apply(&mut snapshot);
                    app.update(now, &snapshot);
                }
                Err(e) => app.error = Some(format!("{e:#}")),
            }
            next_read = now + opts.interval;
        }
    }
}

/// A host's classifier counters (its XDP row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpTotals {
    /// ClientHellos naming the host.
    pub client_hellos: u64,
    /// Packets dropped by `action = "drop"`.
    pub dropped: u64,
    /// Packets dropped over `hello_rate`.
    pub rate_limited: u64,
}

/// A host's terminator counters (its row under `terminator.hosts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TermTotals {
    /// Finished handshakes (or relayed connections).
    pub handshakes: u64,
    /// All failures, whatever the reason.
    pub failures: u64,
    /// Connections open now (a gauge, not a counter).
    pub active: u64,
}

/// What a row stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A configured host (its label is its first name).
    Configured,
    /// A name the classifier saw that no host is configured for.
    Other,
    /// The terminator's `[default]`.
    Default,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Configured => "config",
            Kind::Other => "other",
            Kind::Default => "default",
        }
    }
}

/// One host of a snapshot, its classifier and terminator rows joined by label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The label: the configured host's first name, the other host's name, or `default`.
    pub host: String,
    /// What it is.
    pub kind: Kind,
    /// Its classifier counters, if the classifier has a row for it.
    pub xdp: Option<XdpTotals>,
    /// Its terminator counters, if the terminator has a row for it.
    pub term: Option<TermTotals>,
}

/// Joins the classifier's rows and the terminator's by host label. The terminator's JSON is
/// read defensively: a missing or mistyped field counts as 0, unknown fields are ignored.
pub fn join(snapshot: &Snapshot) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::with_capacity(snapshot.hosts.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(snapshot.hosts.len());
    for h in &snapshot.hosts {
        let totals = XdpTotals {
            client_hellos: h.client_hellos,
            dropped: h.dropped,
            rate_limited: h.rate_limited,
        };
        match index.get(&h.host) {
            // Two other-host entries that escape to the same text: one row.
            Some(&i) => {
                let x = entries[i].xdp.get_or_insert_with(XdpTotals::default);
                x.client_hellos = x.client_hellos.saturating_add(totals.client_hellos);
                x.dropped = x.dropped.saturating_add(totals.dropped);
                x.rate_limited = x.rate_limited.saturating_add(totals.rate_limited);
            }
            None => {
                index.insert(h.host.clone(), entries.len());
                entries.push(Entry {
                    host: h.host.clone(),
                    kind: if h.configured {
                        Kind::Configured
                    } else {
                        Kind::Other
                    },
                    xdp: Some(totals),
                    term: None,
                });
            }
        }
    }
    let term_hosts = snapshot
        .terminator
        .as_ref()
        .and_then(|t| t.get("hosts"))
        .and_then(|h| h.as_array());
    for h in term_hosts.into_iter().flatten() {
        let Some(host) = h.get("host").and_then(|v| v.as_str()) else {
            continue;
        };
        let n = |k: &str| h.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let failures = h
            .get("failures")
            .and_then(|f| f.as_object())
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| v.as_u64())
            .fold(0u64, u64::saturating_add);
        let totals = TermTotals {
            handshakes: n("handshakes"),
            failures,
            active: n("active"),
        };
        match index.get(host) {
            Some(&i) => entries[i].term = Some(totals),
            None => {
                index.insert(host.to_owned(), entries.len());
                entries.push(Entry {
                    host: host.to_owned(),
                    kind: if host == "default" {
                        Kind::Default
                    } else {
                        Kind::Configured
                    },
                    xdp: None,
                    term: Some(totals),
                });
            }
        }
    }
    entries
}

/// Counter increase per second from `prev` to `now` over `secs`. A counter that went down was
/// reset (a reload removed the host, or its slot or map entry was reused): no rate for that
/// interval rather than a huge one.
pub fn per_second(prev: u64, now: u64, secs: f64) -> f64 {
    match now.checked_sub(prev) {
        Some(d) if secs > 0.0 => d as f64 / secs,
        _ => 0.0,
    }
}

/// Per-second rates of one host, or of everything.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// ClientHellos/s.
    pub hellos: f64,
    /// Drops/s (`action = "drop"`).
    pub dropped: f64,
    /// Rate-limited drops/s.
    pub rate_limited: f64,
    /// Handshakes/s.
    pub handshakes: f64,
    /// Handshake failures/s.
    pub failures: f64,
}

impl Rates {
    fn between(
        prev: (Option<XdpTotals>, Option<TermTotals>),
        now: (Option<XdpTotals>, Option<TermTotals>),
        secs: f64,
    ) -> Self {
        let (px, pt) = (prev.0.unwrap_or_default(), prev.1.unwrap_or_default());
        let mut r = Self::default();
        if let Some(x) = now.0 {
            r.hellos = per_second(px.client_hellos, x.client_hellos, secs);
            r.dropped = per_second(px.dropped, x.dropped, secs);
            r.rate_limited = per_second(px.rate_limited, x.rate_limited, secs);
        }
        if let Some(t) = now.1 {
            r.handshakes = per_second(pt.handshakes, t.handshakes, secs);
            r.failures = per_second(pt.failures, t.failures, secs);
        }
        r
    }
}

/// Everything summed, for the header: the classifier's global counters (they also count
/// ClientHellos without a name) and the terminator's handshakes over all hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// Global `client_hellos`.
    pub client_hellos: u64,
    /// Global `dropped`.
    pub dropped: u64,
    /// Global `rate_limited`.
    pub rate_limited: u64,
    /// Terminator handshakes, all hosts.
    pub handshakes: u64,
    /// Terminator failures, all hosts.
    pub failures: u64,
}

impl Globals {
    /// The totals of `snapshot`, whose host rows are `entries`.
    pub fn of(snapshot: &Snapshot, entries: &[Entry]) -> Self {
        let term = entries.iter().filter_map(|e| e.term);
        Self {
            client_hellos: snapshot.global("client_hellos"),
            dropped: snapshot.global("dropped"),
            rate_limited: snapshot.global("rate_limited"),
            handshakes: term.clone().fold(0, |a, t| a.saturating_add(t.handshakes)),
            failures: term.fold(0, |a, t| a.saturating_add(t.failures)),
        }
    }
}

/// What is known of one host across reads.
#[derive(Clone, Debug)]
pub struct HostState {
    /// What it is.
    pub kind: Kind,
    /// Its classifier counters at the last read that had it.
    pub xdp: Option<XdpTotals>,
    /// Its terminator counters at the last read that had it.
    pub term: Option<TermTotals>,
    /// Its rates over the last interval.
    pub rates: Rates,
    /// ClientHellos/s over the last [`HISTORY_LEN`] reads, oldest first; empty for hosts
    /// without traffic or beyond [`MAX_HISTORY_HOSTS`].
    pub history: VecDeque<f64>,
    /// The read (numbered from 1) that last had it.
    seen: u64,
}

impl HostState {
    fn hellos(&self) -> u64 {
        self.xdp.map_or(0, |x| x.client_hellos)
    }
    fn dropped(&self) -> u64 {
        self.xdp.map_or(0, |x| x.dropped)
    }
    fn rate_limited(&self) -> u64 {
        self.xdp.map_or(0, |x| x.rate_limited)
    }
    fn failures(&self) -> u64 {
        self.term.map_or(0, |t| t.failures)
    }
}

/// Hosts and rates across reads.
#[derive(Debug, Default)]
pub struct Model {
    hosts: HashMap<String, HostState>,
    globals: Globals,
    /// Rates of everything over the last interval.
    pub rates: Rates,
    last_read: Option<Instant>,
    reads: u64,
}

impl Model {
    /// Takes the read made at `at`.
    pub fn update(&mut self, at: Instant, entries: Vec<Entry>, globals: Globals) {
        let secs = self
            .last_read
            .map(|t| at.saturating_duration_since(t).as_secs_f64());
        self.reads += 1;
        let read = self.reads;
        for e in entries {
            let state = self.hosts.entry(e.host).or_insert_with(|| HostState {
                kind: e.kind,
                xdp: None,
                term: None,
                rates: Rates::default(),
                history: VecDeque::new(),
                seen: 0,
            });
            // A host missing from the previous read has counters that started after it.
            let prev = if state.seen + 1 == read {
                (state.xdp, state.term)
            } else {
                (None, None)
            };
            state.rates = match secs {
                Some(secs) => Rates::between(prev, (e.xdp, e.term), secs),
                None => Rates::default(),
            };
            state.kind = e.kind;
            state.xdp = e.xdp;
            state.term = e.term;
            state.seen = read;
        }
        self.hosts
            .retain(|_, s| read.saturating_sub(s.seen) <= FORGET_AFTER);
        for s in self.hosts.values_mut().filter(|s| s.seen == read) {
            if s.history.is_empty() && s.rates.hellos <= 0.0 {
                continue;
            }
            s.history.push_back(s.rates.hellos);
            while s.history.len() > HISTORY_LEN {
                s.history.pop_front();
            }
            if s.history.iter().all(|v| *v <= 0.0) {
                s.history = VecDeque::new();
            }
        }
        bound_history(&mut self.hosts, MAX_HISTORY_HOSTS);
        self.rates = match secs {
            Some(secs) => Rates {
                hellos: per_second(self.globals.client_hellos, globals.client_hellos, secs),
                dropped: per_second(self.globals.dropped, globals.dropped, secs),
                rate_limited: per_second(self.globals.rate_limited, globals.rate_limited, secs),
                handshakes: per_second(self.globals.handshakes, globals.handshakes, secs),
                failures: per_second(self.globals.failures, globals.failures, secs),
            },
            None => Rates::default(),
        };
        self.globals = globals;
        self.last_read = Some(at);
    }

    /// Hosts in the last read, those matching `filter` (a substring of the name, any case),
    /// without other hosts unless `show_other`, in `sort` order.
    pub fn visible(
        &self,
        filter: &str,
        show_other: bool,
        sort: SortKey,
    ) -> Vec<(&str, &HostState)> {
        let mut rows: Vec<(&str, &HostState)> = self
            .hosts
            .iter()
            .filter(|(_, s)| s.seen == self.reads)
            .filter(|(_, s)| show_other || s.kind != Kind::Other)
            .filter(|(name, _)| contains_ignore_case(name, filter))
            .map(|(name, s)| (name.as_str(), s))
            .collect();
        rows.sort_by(|a, b| compare(a, b, sort));
        rows
    }

    /// Hosts in the last read.
    pub fn current(&self) -> usize {
        self.hosts.values().filter(|s| s.seen == self.reads).count()
    }

    /// Hosts known (shown or hidden).
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether no host is known.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Hosts that keep a sparkline history.
    pub fn with_history(&self) -> usize {
        self.hosts
            .values()
            .filter(|s| !s.history.is_empty())
            .count()
    }

    /// A host's state, if known.
    pub fn host(&self, name: &str) -> Option<&HostState> {
        self.hosts.get(name)
    }
}

/// Keeps at most `max` histories: configured hosts first, then the busiest over the window.
fn bound_history(hosts: &mut HashMap<String, HostState>, max: usize) {
    let mut kept: Vec<(&String, bool, f64)> = hosts
        .iter()
        .filter(|(_, s)| !s.history.is_empty())
        .map(|(name, s)| (name, s.kind == Kind::Other, s.history.iter().sum::<f64>()))
        .collect();
    if kept.len() <= max {
        return;
    }
    kept.sort_by(|a, b| {
        a.1.cmp(&b.1)
            .then_with(|| b.2.total_cmp(&a.2))
            .then_with(|| a.0.cmp(b.0))
    });
    let dropped: Vec<String> = kept[max..].iter().map(|(n, _, _)| (*n).clone()).collect();
    for name in dropped {
        if let Some(s) = hosts.get_mut(&name) {
            s.history = VecDeque::new();
        }
    }
}

/// The order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// ClientHellos/s, busiest first (`h`, the default).
    Hellos,
    /// Drops/s (`d`).
    Dropped,
    /// Rate-limited drops/s (`r`).
    RateLimited,
    /// Handshake failures/s, then their total (`f`).
    Failures,
    /// Name, A to Z (`n`).
    Name,
    /// Total ClientHellos (`t`).
    Total,
}

impl SortKey {
    fn label(self) -> &'static str {
        match self {
            SortKey::Hellos => "hellos/s",
            SortKey::Dropped => "drops/s",
            SortKey::RateLimited => "rate-limited/s",
            SortKey::Failures => "handshake failures",
            SortKey::Name => "name",
            SortKey::Total => "total hellos",
        }
    }
}

/// Rates first, busiest first; the total breaks ties, then the name.
fn compare(a: &(&str, &HostState), b: &(&str, &HostState), key: SortKey) -> Ordering {
    let (sa, sb) = (a.1, b.1);
    let desc = |x: f64, y: f64| y.total_cmp(&x);
    let by = match key {
        SortKey::Hellos => {
            desc(sa.rates.hellos, sb.rates.hellos).then_with(|| sb.hellos().cmp(&sa.hellos()))
        }
        SortKey::Dropped => {
            desc(sa.rates.dropped, sb.rates.dropped).then_with(|| sb.dropped().cmp(&sa.dropped()))
        }
        SortKey::RateLimited => desc(sa.rates.rate_limited, sb.rates.rate_limited)
            .then_with(|| sb.rate_limited().cmp(&sa.rate_limited())),
        SortKey::Failures => desc(sa.rates.failures, sb.rates.failures)
            .then_with(|| sb.failures().cmp(&sa.failures())),
        SortKey::Total => sb
            .hellos()
            .cmp(&sa.hellos())
            .then_with(|| desc(sa.rates.hellos, sb.rates.hellos)),
        SortKey::Name => Ordering::Equal,
    };
    by.then_with(|| a.0.cmp(b.0))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// `history`'s last `width` values as block characters, newest on the right, each scaled to
/// the largest shown; zero is blank, anything above it at least the lowest block.
pub fn spark(history: &VecDeque<f64>, width: usize) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let shown = history.len().min(width);
    let values = history.iter().skip(history.len() - shown);
    let max = values.clone().fold(0.0f64, |a, v| a.max(*v));
    let mut out = " ".repeat(width - shown);
    for v in values {
        if *v <= 0.0 || max <= 0.0 {
            out.push(' ');
        } else {
            let level = ((v / max) * (BLOCKS.len() - 1) as f64).round() as usize;
            out.push(BLOCKS[level.min(BLOCKS.len() - 1)]);
        }
    }
    out
}

/// What a key asks of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep going.
    Continue,
    /// Leave.
    Quit,
}

/// The model and the state of the view.
pub struct App {
    /// Hosts and rates.
    pub model: Model,
    /// The table's order.
    pub sort: SortKey,
    /// Substring that names must contain.
    pub filter: String,
    /// Whether keys go to the filter (after `/`).
    pub editing: bool,
    /// Whether hosts that are not configured are shown.
    pub show_other: bool,
    /// Whether the fingerprint view (key `j`) is shown instead of the hosts.
    pub show_fingerprints: bool,
    /// The fingerprints and their rates.
    pub fingerprints: top_fingerprints::Panel,
    /// First row shown.
    pub scroll: usize,
    /// Rows the table showed last (the PgUp/PgDn step).
    page: usize,
    /// The last failed read, while reads fail.
    pub error: Option<String>,
    /// The last successful read.
    last_ok: Option<Instant>,
    started: Instant,
    pin_dir: PathBuf,
    control: PathBuf,
    interval: Duration,
}

impl App {
    /// A view of `opts` started at `now`, before any read.
    pub fn new(opts: &Options, now: Instant) -> Self {
        Self {
            model: Model::default(),
            sort: SortKey::Hellos,
            filter: String::new(),
            editing: false,
            show_other: true,
            show_fingerprints: false,
            fingerprints: top_fingerprints::Panel::default(),
            scroll: 0,
            page: 10,
            error: None,
            last_ok: None,
            started: now,
            pin_dir: opts.pin_dir.clone(),
            control: opts.control.clone(),
            interval: opts.interval,
        }
    }

    /// Takes a successful read made at `at`.
    pub fn update(&mut self, at: Instant, snapshot: &Snapshot) {
        let entries = join(snapshot);
        let globals = Globals::of(snapshot, &entries);
        self.model.update(at, entries, globals);
        self.fingerprints.update(at, &snapshot.fingerprints);
        self.error = None;
        self.last_ok = Some(at);
    }

    /// Handles one key.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Continue;
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        if self.editing {
            match key.code {
                KeyCode::Char(c) if self.filter.len() < MAX_FILTER && !c.is_control() => {
                    self.filter.push(c);
                    self.scroll = 0;
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                    self.scroll = 0;
                }
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.filter.clear();
                    self.editing = false;
                    self.scroll = 0;
                }
                _ => {}
            }
            return Action::Continue;
        }
        let sort = |app: &mut Self, key| {
            app.sort = key;
            app.scroll = 0;
        };
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('h') => sort(self, SortKey::Hellos),
            KeyCode::Char('d') => sort(self, SortKey::Dropped),
            KeyCode::Char('r') => sort(self, SortKey::RateLimited),
            KeyCode::Char('f') => sort(self, SortKey::Failures),
            KeyCode::Char('n') => sort(self, SortKey::Name),
            KeyCode::Char('t') => sort(self, SortKey::Total),
            KeyCode::Char('/') => self.editing = true,
            KeyCode::Char('o') => {
                self.show_other = !self.show_other;
                self.scroll = 0;
            }
            KeyCode::Char('j') => {
                self.show_fingerprints = !self.show_fingerprints;
                self.scroll = 0;
            }
            KeyCode::Up => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down => self.scroll = self.scroll.saturating_add(1),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(self.page.max(1)),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(self.page.max(1)),
            KeyCode::Home => self.scroll = 0,
            KeyCode::End => self.scroll = usize::MAX,
            _ => {}
        }
        Action::Continue
    }

    /// Draws the whole screen (and clamps the scroll to what there is).
    pub fn render(&mut self, frame: &mut Frame) {
        let now = Instant::now();
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Min(2),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        if self.show_fingerprints {
            let rows = self.fingerprints.visible(&self.filter);
            let hosts = self
                .model
                .visible(&self.filter, self.show_other, self.sort)
                .len();
            frame.render_widget(self.header(now, hosts), head);
            self.page = usize::from(body.height.saturating_sub(1)).max(1);
            self.scroll = self.scroll.min(rows.len().saturating_sub(self.page));
            let shown: Vec<_> = rows.into_iter().skip(self.scroll).collect();
            let drill_down = !self.filter.is_empty();
            frame.render_widget(top_fingerprints::table(&shown, drill_down, body), body);
            frame.render_widget(self.footer(), foot);
            return;
        }
        let rows = self.model.visible(&self.filter, self.show_other, self.sort);
        frame.render_widget(self.header(now, rows.len()), head);
        self.page = usize::from(body.height.saturating_sub(1)).max(1);
        self.scroll = self.scroll.min(rows.len().saturating_sub(self.page));
        let shown = rows.iter().skip(self.scroll).take(self.page);
        frame.render_widget(table(shown, body), body);
        frame.render_widget(self.footer(), foot);
    }

    fn header(&self, now: Instant, shown: usize) -> Paragraph<'static> {
        let r = &self.model.rates;
        let mut first = format!(
            "sni-user top  pin dir {}  control {}  up {}  every {:.1} s",
            self.pin_dir.display(),
            self.control.display(),
            clock(now.saturating_duration_since(self.started)),
            self.interval.as_secs_f64()
        );
        if self.model.reads == 0 {
            first.push_str("  (no read yet)");
        }
        let second = format!(
            "ClientHellos/s {}  drops/s {}  rate-limited/s {}  handshakes/s {}  \
             failures/s {}  hosts {shown} of {}  sort: {}",
            rate(r.hellos),
            rate(r.dropped),
            rate(r.rate_limited),
            rate(r.handshakes),
            rate(r.failures),
            self.model.current(),
            self.sort.label()
        );
        let mut third = Vec::new();
        if let Some(e) = &self.error {
            let age = self
                .last_ok
                .map(|t| {
                    let age = clock(now.saturating_duration_since(t));
                    format!(" (showing the last good read, {age} old)")
                })
                .unwrap_or_default();
            third.push(Span::styled(
                format!("read failed, retrying{age}: {e}"),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ));
        } else {
            let mut s = String::new();
            if !self.filter.is_empty() {
                let _ = write!(s, "filter: {:?}  ", self.filter);
            }
            if !self.show_other {
                s.push_str("other hosts hidden");
            }
            third.push(Span::raw(s));
        }
        Paragraph::new(vec![
            Line::from(Span::styled(
                first,
                Style::new().add_modifier(Modifier::BOLD),
            )),
            Line::from(second),
            Line::from(third),
        ])
    }

    fn footer(&self) -> Paragraph<'static> {
        let text = if self.editing {
            format!(
                "filter: {}_   (Enter keep, Esc clear, Backspace delete)",
                self.filter
            )
        } else {
            "q quit   sort: h hellos/s  d drops  r ratelim  f failures  n name  t total   \
             / filter   o other hosts   j fingerprints (/ a host: its own)   ↑↓ PgUp PgDn \
             scroll"
                .to_owned()
        };
        Paragraph::new(text).style(Style::new().add_modifier(Modifier::REVERSED))
    }
}

/// The table's columns between the host and the sparkline: title, width.
const COLUMNS: [(&str, u16); 8] = [
    ("KIND", 7),
    ("HELLOS/S", 9),
    ("HELLOS", 11),
    ("DROPS/S", 8),
    ("RATELIM/S", 9),
    ("HS FAIL", 8),
    ("FAIL/S", 7),
    ("ACTIVE", 7),
];

fn table<'a, 'b>(
    rows: impl Iterator<Item = &'b (&'b str, &'b HostState)> + Clone,
    area: Rect,
) -> Table<'a> {
    let host_width = rows
        .clone()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(12, 48) as u16;
    // One space between columns: after the host and after each of COLUMNS.
    let fixed: u16 = COLUMNS.iter().map(|c| c.1 + 1).sum::<u16>() + host_width + 1;
    let spark_width = usize::from(area.width.saturating_sub(fixed)).min(HISTORY_LEN);
    let mut widths = vec![Constraint::Length(host_width)];
    widths.extend(COLUMNS.iter().map(|c| Constraint::Length(c.1)));
    widths.push(Constraint::Length(spark_width as u16));
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let mut header = vec![Cell::from("HOST")];
    header.extend(COLUMNS.iter().map(|c| {
        if c.0 == "KIND" {
            Cell::from(c.0)
        } else {
            right(c.0.to_owned())
        }
    }));
    header.push(Cell::from(format!("HELLOS/S, last {spark_width}")));
    let body: Vec<Row> = rows
        .map(|(name, s)| {
            let dash = || "-".to_owned();
            let xdp = |f: fn(&XdpTotals) -> String| s.xdp.as_ref().map_or_else(dash, f);
            let term = |f: fn(&TermTotals) -> String| s.term.as_ref().map_or_else(dash, f);
            let style = match s.kind {
                Kind::Configured => Style::new(),
                Kind::Other => Style::new().add_modifier(Modifier::DIM),
                Kind::Default => Style::new().add_modifier(Modifier::ITALIC),
            };
            let hellos_rate = if s.xdp.is_some() {
                rate(s.rates.hellos)
            } else {
                dash()
            };
            let per_s = |v: f64, on: bool| if on { rate(v) } else { dash() };
            Row::new(vec![
                Cell::from(truncate(name, usize::from(host_width))),
                Cell::from(s.kind.label()),
                right(hellos_rate),
                right(xdp(|x| x.client_hellos.to_string())),
                right(per_s(s.rates.dropped, s.xdp.is_some())),
                right(per_s(s.rates.rate_limited, s.xdp.is_some())),
                right(term(|t| t.failures.to_string())),
                right(per_s(s.rates.failures, s.term.is_some())),
                right(term(|t| t.active.to_string())),
                Cell::from(spark(&s.history, spark_width)),
            ])
            .style(style)
        })
        .collect();
    Table::new(body, widths).header(
        Row::new(header).style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)),
    )
}

/// A rate, to one decimal.
fn rate(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// `h:mm:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Whether the terminal is in raw mode on the alternate screen (so it must be restored).
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// Raw mode and the alternate screen, given back on drop: on return, on error, and during a
/// panic's unwinding. The panic hook restores first, so the panic message lands on the
/// normal screen where it can be read.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<Self> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        TERMINAL_TAKEN.store(true, SeqCst);
        // From here, any failure gives the terminal back as the guard drops.
        let guard = Self;
        terminal::enable_raw_mode()?;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(
            std::io::stdout(),
            terminal::LeaveAlternateScreen,
            cursor::Show
        );
    }
}

#[cfg(test)]
mod tests {

    use ratatui::backend::TestBackend;
    use serde_json::json;

    use super::*;
    use crate::kernel::readers::HostRow;

    fn xdp(host: &str, hellos: u64, dropped: u64, rate_limited: u64, configured: bool) -> HostRow {
        HostRow {
            host: host.to_owned(),
            client_hellos: hellos,
            packets: hellos * 5,
            bytes: hellos * 1500,
            ech: 0,
            dropped,
            rate_limited,
            configured,
        }
    }

    fn snapshot(hosts: Vec<HostRow>, terminator: Option<serde_json::Value>) -> Snapshot {
        let mut global = serde_json::Map::new();
        let sum = |f: fn(&HostRow) -> u64| hosts.iter().map(f).sum::<u64>();
        global.insert("client_hellos".into(), sum(|h| h.client_hellos).into());
        global.insert("dropped".into(), sum(|h| h.dropped).into());
        global.insert("rate_limited".into(), sum(|h| h.rate_limited).into());
        Snapshot {
            hosts,
            global,
            fingerprints: crate::kernel::fingerprint_rows::FingerprintRows::default(),
            terminator,
        }
    }

    fn opts() -> Options {
        Options {
            pin_dir: "/sys/fs/bpf/sni".into(),
            control: "/run/sni/control.sock".into(),
            interval: Duration::from_secs(1),
            view: crate::kernel::fingerprint_rows::View::default(),
        }
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn names(rows: &[(&str, &HostState)]) -> Vec<String> {
        rows.iter().map(|(n, _)| (*n).to_owned()).collect()
    }

    #[test]
    fn interval_is_positive_and_at_most_a_minute() {
        assert_eq!(parse_interval("1.0").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("60").unwrap(), Duration::from_secs(60));
        for bad in ["0", "-1", "60.5", "NaN", "inf", "", "1s"] {
            assert!(parse_interval(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_counter_that_goes_down_was_reset() {
        assert_eq!(per_second(10, 30, 2.0), 10.0);
        assert_eq!(per_second(30, 10, 2.0), 0.0);
        assert_eq!(per_second(u64::MAX, 0, 1.0), 0.0);
        assert_eq!(per_second(0, u64::MAX, 1.0), u64::MAX as f64);
        assert_eq!(per_second(1, 5, 0.0), 0.0);
    }

    #[test]
    fn terminator_rows_join_by_label_and_are_read_defensively() {
        let s = snapshot(
            vec![
                xdp("a.example", 10, 0, 0, true),
                xdp("b.example", 5, 2, 1, true),
                xdp("x.other", 3, 0, 0, false),
                xdp("x.other", 1, 0, 0, false),
            ],
            Some(json!({
                "hosts": [
                    {"host": "a.example", "handshakes": 8, "active": 1,
                     "failures": {"tls": 1, "handshake_timeout": 1, "future": "n/a"}},
                    {"host": "default", "handshakes": 3},
                    {"handshakes": 99},
                    {"host": "c.example", "handshakes": "many", "failures": []},
                ],
                "global": {},
            })),
        );
        let e = join(&s);
        let find = |n: &str| e.iter().find(|e| e.host == n).unwrap();
        assert_eq!(e.len(), 5, "{e:?}");
        let a = find("a.example");
        assert_eq!(a.kind, Kind::Configured);
        assert_eq!(a.xdp.unwrap().client_hellos, 10);
        assert_eq!(
            a.term,
            Some(TermTotals {
                handshakes: 8,
                failures: 2,
                active: 1
            })
        );
        assert_eq!(find("b.example").term, None);
        assert_eq!(find("x.other").kind, Kind::Other);
        assert_eq!(find("x.other").xdp.unwrap().client_hellos, 4);
        let d = find("default");
        assert_eq!((d.kind, d.xdp), (Kind::Default, None));
        assert_eq!(d.term.unwrap().handshakes, 3);
        assert_eq!(find("c.example").term, Some(TermTotals::default()));
        // Nothing but a classifier, or nothing at all.
        assert_eq!(join(&snapshot(vec![], Some(json!({"hosts": 7})))), vec![]);
        assert_eq!(join(&snapshot(vec![], Some(json!([])))), vec![]);
    }

    #[test]
    fn rates_come_from_successive_reads() {
        let mut app = App::new(&opts(), Instant::now());
        let t0 = Instant::now();
        let term = |hs: u64, tls: u64| {
            Some(
                json!({"hosts": [{"host": "a.example", "handshakes": hs, "active": 0,
                                   "failures": {"tls": tls}}]}),
            )
        };
        app.update(
            t0,
            &snapshot(vec![xdp("a.example", 100, 0, 0, true)], term(90, 1)),
        );
        // The first read has totals and no rates.
        let a = app.model.host("a.example").unwrap();
        assert_eq!((a.hellos(), a.rates.hellos), (100, 0.0));
        assert!(a.history.is_empty());
        app.update(
            t0 + Duration::from_secs(2),
            &snapshot(
                vec![
                    xdp("a.example", 120, 4, 2, true),
                    xdp("new.other", 6, 0, 0, false),
                ],
                term(100, 3),
            ),
        );
        let a = app.model.host("a.example").unwrap();
        assert_eq!(
            a.rates,
            Rates {
                hellos: 10.0,
                dropped: 2.0,
                rate_limited: 1.0,
                handshakes: 5.0,
                failures: 1.0
            }
        );
        assert_eq!(a.history, [10.0]);
        // A host first seen now counted everything since the previous read.
        assert_eq!(app.model.host("new.other").unwrap().rates.hellos, 3.0);
        assert_eq!(app.model.rates.hellos, 13.0);
        assert_eq!(app.model.rates.handshakes, 5.0);
    }

    #[test]
    fn a_reset_counter_gives_no_rate_and_no_panic() {
        let mut m = Model::default();
        let t0 = Instant::now();
        let e = |n: u64| Entry {
            host: "a.example".into(),
            kind: Kind::Configured,
            xdp: Some(XdpTotals {
                client_hellos: n,
                dropped: n,
                rate_limited: n,
            }),
            term: Some(TermTotals {
                handshakes: n,
                failures: n,
                active: n,
            }),
        };
        let g = |n: u64| Globals {
            client_hellos: n,
            dropped: n,
            rate_limited: n,
            handshakes: n,
            failures: n,
        };
        m.update(t0, vec![e(u64::MAX)], g(u64::MAX));
        m.update(t0 + Duration::from_secs(1), vec![e(5)], g(5));
        assert_eq!(m.host("a.example").unwrap().rates, Rates::default());
        assert_eq!(m.rates, Rates::default());
        m.update(t0 + Duration::from_secs(2), vec![e(8)], g(8));
        assert_eq!(m.host("a.example").unwrap().rates.hellos, 3.0);
        assert_eq!(m.rates.failures, 3.0);
        // Two reads at the same instant: no division by zero.
        m.update(t0 + Duration::from_secs(2), vec![e(9)], g(9));
        assert_eq!(m.host("a.example").unwrap().rates.hellos, 0.0);
    }

    #[test]
    fn a_host_gone_is_hidden_then_forgotten_and_counts_afresh_when_back() {
        let mut m = Model::default();
        let t0 = Instant::now();
        let e = |host: &str, n: u64| Entry {
            host: host.into(),
            kind: Kind::Other,
            xdp: Some(XdpTotals {
                client_hellos: n,
                ..XdpTotals::default()
            }),
            term: None,
        };
        let at = |i: u64| t0 + Duration::from_secs(i);
        m.update(at(0), vec![e("a", 50), e("b", 1)], Globals::default());
        m.update(at(1), vec![e("b", 2)], Globals::default());
        assert_eq!(names(&m.visible("", true, SortKey::Name)), ["b"]);
        assert!(m.host("a").is_some(), "forgotten too soon");
        // Back with a new entry: its counter started after the previous read.
        m.update(at(2), vec![e("a", 4), e("b", 3)], Globals::default());
        assert_eq!(m.host("a").unwrap().rates.hellos, 4.0);
        for i in 3..(4 + FORGET_AFTER) {
            m.update(at(i), vec![e("b", 3 + i)], Globals::default());
        }
        assert!(m.host("a").is_none(), "never forgotten");
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn history_is_bounded_in_length_and_dropped_when_idle() {
        let mut m = Model::default();
        let t0 = Instant::now();
        let e = |n: u64| Entry {
            host: "a".into(),
            kind: Kind::Configured,
            xdp: Some(XdpTotals {
                client_hellos: n,
                ..XdpTotals::default()
            }),
            term: None,
        };
        let mut n = 0;
        for i in 0..(HISTORY_LEN as u64 + 20) {
            n += i;
            m.update(t0 + Duration::from_secs(i), vec![e(n)], Globals::default());
        }
        let h = &m.host("a").unwrap().history;
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h.back(), Some(&(HISTORY_LEN as f64 + 19.0)));
        // A minute without traffic: nothing left to draw, nothing kept.
        for i in 0..HISTORY_LEN as u64 {
            m.update(
                t0 + Duration::from_secs(100 + i),
                vec![e(n)],
                Globals::default(),
            );
        }
        assert!(m.host("a").unwrap().history.is_empty());
    }

    #[test]
    fn many_hosts_keep_few_histories_configured_first() {
        let mut m = Model::default();
        let t0 = Instant::now();
        let hosts = 16_384u64;
        let read = |round: u64| -> Vec<Entry> {
            let mut v: Vec<Entry> = (0..hosts)
                .map(|i| Entry {
                    host: format!("h{i}.other"),
                    kind: Kind::Other,
                    xdp: Some(XdpTotals {
                        client_hellos: round * (i + 1),
                        ..XdpTotals::default()
                    }),
                    term: None,
                })
                .collect();
            v.push(Entry {
                host: "quiet.example".into(),
                kind: Kind::Configured,
                xdp: Some(XdpTotals {
                    client_hellos: round,
                    ..XdpTotals::default()
                }),
                term: None,
            });
            v
        };
        for round in 0..5 {
            m.update(
                t0 + Duration::from_secs(round),
                read(round),
                Globals::default(),
            );
            assert!(m.with_history() <= MAX_HISTORY_HOSTS);
        }
        assert_eq!(m.len(), hosts as usize + 1);
        assert_eq!(m.with_history(), MAX_HISTORY_HOSTS);
        assert!(!m.host("quiet.example").unwrap().history.is_empty());
        // The busiest others kept theirs; the quietest did not.
        assert!(!m
            .host(&format!("h{}.other", hosts - 1))
            .unwrap()
            .history
            .is_empty());
        assert!(m.host("h0.other").unwrap().history.is_empty());
        let top = m.visible("", true, SortKey::Hellos);
        assert_eq!(top.len(), hosts as usize + 1);
        assert_eq!(top[0].0, format!("h{}.other", hosts - 1));
    }

    fn sorted_model() -> Model {
        let mut m = Model::default();
        let t0 = Instant::now();
        let e = |host: &str, kind, h: u64, d: u64, r: u64, f: Option<u64>| Entry {
            host: host.into(),
            kind,
            xdp: Some(XdpTotals {
                client_hellos: h,
                dropped: d,
                rate_limited: r,
            }),
            term: f.map(|f| TermTotals {
                failures: f,
                ..TermTotals::default()
            }),
        };
        m.update(
            t0,
            vec![
                e("alpha.test", Kind::Configured, 1000, 0, 0, Some(0)),
                e("beta.test", Kind::Configured, 0, 0, 0, Some(0)),
                e("zed.other", Kind::Other, 0, 0, 0, None),
                e("drop.test", Kind::Configured, 0, 0, 0, Some(0)),
            ],
            Globals::default(),
        );
        m.update(
            t0 + Duration::from_secs(1),
            vec![
                e("alpha.test", Kind::Configured, 1001, 0, 0, Some(7)),
                e("beta.test", Kind::Configured, 5, 0, 3, Some(0)),
                e("zed.other", Kind::Other, 9, 0, 0, None),
                e("drop.test", Kind::Configured, 2, 2, 0, Some(1)),
            ],
            Globals::default(),
        );
        m
    }

    #[test]
    fn sort_keys_order_the_rows() {
        let m = sorted_model();
        let order = |k| names(&m.visible("", true, k));
        assert_eq!(
            order(SortKey::Hellos),
            ["zed.other", "beta.test", "drop.test", "alpha.test"]
        );
        assert_eq!(
            order(SortKey::Total),
            ["alpha.test", "zed.other", "beta.test", "drop.test"]
        );
        assert_eq!(
            order(SortKey::Name),
            ["alpha.test", "beta.test", "drop.test", "zed.other"]
        );
        assert_eq!(order(SortKey::Dropped)[0], "drop.test");
        assert_eq!(order(SortKey::RateLimited)[0], "beta.test");
        assert_eq!(order(SortKey::Failures)[..2], ["alpha.test", "drop.test"]);
    }

    #[test]
    fn filter_and_other_hosts() {
        let m = sorted_model();
        assert_eq!(
            names(&m.visible(".TEST", true, SortKey::Name)),
            ["alpha.test", "beta.test", "drop.test"]
        );
        assert_eq!(
            names(&m.visible("ta.t", true, SortKey::Name)),
            ["beta.test"]
        );
        assert!(m.visible("nothing", true, SortKey::Name).is_empty());
        assert_eq!(
            names(&m.visible("", false, SortKey::Name)),
            ["alpha.test", "beta.test", "drop.test"]
        );
    }

    #[test]
    fn keys_sort_filter_scroll_and_quit() {
        let mut app = App::new(&opts(), Instant::now());
        assert_eq!(app.on_key(key(KeyCode::Char('n'))), Action::Continue);
        assert_eq!(app.sort, SortKey::Name);
        for (c, k) in [
            ('d', SortKey::Dropped),
            ('r', SortKey::RateLimited),
            ('f', SortKey::Failures),
            ('t', SortKey::Total),
            ('h', SortKey::Hellos),
        ] {
            app.on_key(key(KeyCode::Char(c)));
            assert_eq!(app.sort, k);
        }
        // A filter takes every key, q and Esc included, until Enter or Esc.
        app.on_key(key(KeyCode::Char('/')));
        for c in "beqx".chars() {
            assert_eq!(app.on_key(key(KeyCode::Char(c))), Action::Continue);
        }
        app.on_key(key(KeyCode::Backspace));
        app.on_key(key(KeyCode::Enter));
        assert_eq!((app.filter.as_str(), app.editing), ("beq", false));
        app.on_key(key(KeyCode::Char('/')));
        app.on_key(key(KeyCode::Esc));
        assert_eq!((app.filter.as_str(), app.editing), ("", false));
        app.on_key(key(KeyCode::Char('o')));
        assert!(!app.show_other);
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::PageDown));
        assert_eq!(app.scroll, 1 + app.page);
        app.on_key(key(KeyCode::PageUp));
        app.on_key(key(KeyCode::Up));
        app.on_key(key(KeyCode::Up));
        assert_eq!(app.scroll, 0);
        // Filter length is bounded.
        app.on_key(key(KeyCode::Char('/')));
        for _ in 0..1000 {
            app.on_key(key(KeyCode::Char('a')));
        }
        assert_eq!(app.filter.len(), MAX_FILTER);
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(app.on_key(key(KeyCode::Esc)), Action::Quit);
    }

    #[test]
    fn sparkline_scales_to_its_own_peak() {
        let h: VecDeque<f64> = [0.0, 1.0, 2.0, 4.0, 8.0].into_iter().collect();
        assert_eq!(spark(&h, 5), " ▂▃▅█");
        assert_eq!(spark(&h, 8), "    ▂▃▅█");
        assert_eq!(spark(&h, 2), "▅█");
        assert_eq!(spark(&h, 0), "");
        assert_eq!(spark(&VecDeque::new(), 3), "   ");
        let flat: VecDeque<f64> = [0.0, 0.0].into_iter().collect();
        assert_eq!(spark(&flat, 2), "  ");
    }

    fn screen(app: &mut App, width: u16, height: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(width, height)).unwrap();
        term.draw(|f| app.render(f)).unwrap();
        let buf = term.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..height {
            for x in 0..width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn j_shows_the_fingerprints_and_a_filter_the_hosts_own() {
        use crate::kernel::fingerprint_rows::{FingerprintRows, HostFingerprints, Ja4Row};
        let mut app = App::new(&opts(), Instant::now());
        let mut snap = snapshot(vec![xdp("a.example", 3, 0, 0, true)], None);
        let ja4 = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6";
        let row = Ja4Row {
            ja4: ja4.to_owned(),
            client_hellos: 3,
            ..Ja4Row::default()
        };
        snap.fingerprints = FingerprintRows {
            configured: Vec::new(),
            other: vec![row.clone()],
            hosts: vec![HostFingerprints {
                host: "a.example".to_owned(),
                configured: true,
                top: vec![row],
                rest_fingerprints: 0,
                rest: Ja4Row::default(),
            }],
        };
        app.update(Instant::now(), &snap);
        assert!(!screen(&mut app, 140, 10).contains(ja4));
        app.on_key(key(KeyCode::Char('j')));
        let s = screen(&mut app, 140, 10);
        assert!(s.contains("FINGERPRINT (JA4)") && s.contains(ja4), "{s}");
        assert!(!s.contains("HOST "), "{s}");
        for c in "/a.ex".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(key(KeyCode::Enter));
        let s = screen(&mut app, 140, 10);
        assert!(s.contains("a.example") && s.contains(ja4), "{s}");
        app.on_key(key(KeyCode::Char('j')));
        assert!(!app.show_fingerprints);
    }

    #[test]
    fn scrolling_stays_within_the_rows() {
        let mut app = App::new(&opts(), Instant::now());
        let hosts = |n: u64| {
            (0..50)
                .map(|i| xdp(&format!("h{i:02}.test"), n, 0, 0, true))
                .collect()
        };
        let t0 = Instant::now();
        app.update(t0, &snapshot(hosts(1), None));
        app.on_key(key(KeyCode::Char('n')));
        let first_row = |s: &str| {
            s.lines()
                .nth(4)
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("")
                .to_owned()
        };
        // 3 header lines, the table's title row, 10 rows, the footer.
        let s = screen(&mut app, 120, 15);
        assert_eq!(first_row(&s), "h00.test", "{s}");
        assert_eq!(app.page, 10);
        app.on_key(key(KeyCode::PageDown));
        app.on_key(key(KeyCode::Down));
        assert_eq!(first_row(&screen(&mut app, 120, 15)), "h11.test");
        app.on_key(key(KeyCode::End));
        let s = screen(&mut app, 120, 15);
        assert_eq!(first_row(&s), "h40.test", "{s}");
        assert!(s.contains("h49.test"), "{s}");
        for _ in 0..10 {
            app.on_key(key(KeyCode::PageDown));
        }
        assert_eq!(first_row(&screen(&mut app, 120, 15)), "h40.test");
        // A filter starts again from the top.
        app.on_key(key(KeyCode::Char('/')));
        app.on_key(key(KeyCode::Char('4')));
        let s = screen(&mut app, 120, 15);
        assert_eq!(first_row(&s), "h04.test", "{s}");
        assert_eq!(app.scroll, 0);
    }

    #[test]
    fn the_screen_shows_rows_errors_and_the_filter() {
        let mut app = App::new(&opts(), Instant::now());
        let t0 = Instant::now();
        let term = Some(json!({"hosts": [
            {"host": "alpha.test", "handshakes": 4, "active": 2, "failures": {"tls": 1}},
            {"host": "default", "handshakes": 1, "active": 0, "failures": {}},
        ]}));
        app.update(
            t0,
            &snapshot(
                vec![
                    xdp("alpha.test", 5, 0, 0, true),
                    xdp("zzz.other", 2, 0, 0, false),
                ],
                term.clone(),
            ),
        );
        app.update(
            t0 + Duration::from_secs(1),
            &snapshot(
                vec![
                    xdp("alpha.test", 9, 0, 0, true),
                    xdp("zzz.other", 2, 0, 0, false),
                ],
                term,
            ),
        );
        let s = screen(&mut app, 160, 12);
        assert!(s.contains("ClientHellos/s 4.0"), "{s}");
        let alpha = s.lines().find(|l| l.starts_with("alpha.test")).unwrap();
        let cols: Vec<&str> = alpha.split_whitespace().collect();
        assert_eq!(
            cols[..9],
            [
                "alpha.test",
                "config",
                "4.0",
                "9",
                "0.0",
                "0.0",
                "1",
                "0.0",
                "2"
            ]
        );
        assert!(alpha.trim_end().ends_with('█'), "{alpha}");
        let default = s.lines().find(|l| l.starts_with("default")).unwrap();
        assert_eq!(default.split_whitespace().nth(2), Some("-"));
        assert!(s.contains("zzz.other"), "{s}");
        app.on_key(key(KeyCode::Char('o')));
        let s = screen(&mut app, 160, 12);
        assert!(
            !s.contains("zzz.other") && s.contains("other hosts hidden"),
            "{s}"
        );
        app.error = Some("cannot open /sys/fs/bpf/sni/x".into());
        let s = screen(&mut app, 160, 12);
        assert!(
            s.contains("read failed, retrying (showing the last good read, 0:00:0"),
            "{s}"
        );
        assert!(s.contains("old): cannot open /sys/fs/bpf/sni/x"), "{s}");
        assert!(
            s.contains("alpha.test"),
            "the last read stays on screen: {s}"
        );
        // A tiny terminal: no panic.
        let _ = screen(&mut app, 10, 3);
        let _ = screen(&mut app, 1, 1);
    }
}
