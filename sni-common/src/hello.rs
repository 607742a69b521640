//! A resumable TLS ClientHello parser that finds the server_name.
//!
//! One state machine for both sides. It reads the record layer and the ClientHello one field at
//! a time, keeps everything it needs in [`Parser`] (a fixed-size `#[repr(C)]` struct that can
//! live in a BPF map), and can stop at any byte and resume with the next bytes of the stream:
//! a ClientHello split across TCP segments or across TLS records is read the same as one in a
//! single buffer.
//!
//! Each call of [`Parser::step`] does a bounded amount of work and either consumes at least one
//! byte or finishes a zero-length field (which is always followed by a field that consumes), so
//! `2 * len + 2` steps always suffice for `len` bytes of input. A step that completes a field
//! also passes over the field after it, when that one is skipped whole (an extension's body,
//! the random) and the input and the record hold it. Before its field, a step leaps
//! ([`Parser::leap`]): over the ClientHello's fields of fixed order, read straight through
//! when the input and the record hold them all; over the lengths in front of the first value
//! of an extension it reads (the name, the first ALPN protocol, the signature algorithms, the
//! supported versions); or over up to `PLAIN_EXTENSIONS_PER_STEP` (four) extensions nothing
//! reads (neither the name nor JA4), each whole in the input and the record, the last one
//! excepted.
//! The kernel drives `step` from `bpf_loop`; userspace calls [`Parser::feed`].
//!
//! The wire grammar, from RFC 8446 §4.1.2 and RFC 6066 §3:
//! ```text
//! struct { ContentType type = 22; ProtocolVersion legacy_record_version;
//!          uint16 length; opaque fragment[length]; } TLSPlaintext;   (one or more)
//! struct { HandshakeType msg_type = 1; uint24 length; ClientHello body; } Handshake;
//! struct { ProtocolVersion legacy_version; Random random[32];
//!          opaque legacy_session_id<0..32>; CipherSuite cipher_suites<2..2^16-2>;
//!          opaque legacy_compression_methods<1..2^8-1>;
//!          Extension extensions<0..2^16-1>; } ClientHello;
//! struct { ExtensionType extension_type; opaque extension_data<0..2^16-1>; } Extension;
//! struct { ServerName server_name_list<1..2^16-1> } ServerNameList;
//! struct { NameType name_type = 0; HostName host_name<1..2^16-1>; } ServerName;
//! ```

use crate::{
    host::{lower, HostKey, MAX_NAME_LEN},
    ja4::{ext as ja4_ext, Ja4State},
};

/// Whether `stage` is a field passed over without reading its bytes.
#[inline(always)]
const fn is_skip(stage: u8) -> bool {
    matches!(stage, S_RANDOM | S_SID | S_CS | S_COMP | S_EXT_BODY)
}

/// TLS ContentType `handshake` (RFC 8446 §5.1).
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// Major byte of every TLS ProtocolVersion (0x0301 TLS 1.0 … 0x0304 TLS 1.3).
const VERSION_MAJOR: u8 = 3;
/// HandshakeType `client_hello` (RFC 8446 §4).
const HANDSHAKE_CLIENT_HELLO: u32 = 1;
/// TLSPlaintext.length MUST NOT exceed 2^14 (RFC 8446 §5.1).
const MAX_RECORD_LEN: u16 = 1 << 14;
/// Smallest ClientHello body: version 2 + random 32 + session id length 1 + cipher suites
/// length 2 + one suite 2 + compression length 1 + one method 1.
const MIN_HELLO_LEN: u32 = 41;
/// legacy_session_id is at most 32 bytes (RFC 8446 §4.1.2).
const MAX_SESSION_ID_LEN: u32 = 32;
/// ExtensionType `server_name` (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0;
/// ExtensionType `encrypted_client_hello` (RFC 9849 §11.1; 0xfe0d since draft 13).
const EXT_ECH: u16 = 0xfe0d;
/// NameType `host_name` (RFC 6066 §3), the only one defined.
const NAME_TYPE_HOST: u32 = 0;

/// Whether the first six bytes of a TCP payload can start a ClientHello: a handshake record
/// (content type 22, version 3.x) whose first message is a ClientHello (type 1 at byte 5),
/// or an SSLv2-compatible ClientHello ([`starts_sslv2_client_hello`]).
/// Both sides run it before the parser, so that only such segments start a parse.
#[inline(always)]
pub const fn starts_client_hello(head: [u8; 6]) -> bool {
    (head[0] == CONTENT_TYPE_HANDSHAKE && head[1] == VERSION_MAJOR && head[5] == 1)
        || starts_sslv2_client_hello(head)
}

/// Whether the first bytes are an SSLv2-compatible ClientHello (RFC 5246 appendix E.2), as
/// old clients and some scanners still send: a two-byte record header with its high bit set
/// and a length that holds the fixed fields, one cipher spec and a 16-byte challenge, then
/// message type 1 (CLIENT-HELLO) and a version of 3.0 to 3.3. About one random segment in
/// 2^21 looks like this, not one in 2^17 as with the type and major version alone.
#[inline(always)]
pub const fn starts_sslv2_client_hello(head: [u8; 6]) -> bool {
    let len = ((head[0] & 0x7f) as u16) << 8 | head[1] as u16;
    head[0] & 0x80 != 0
        && len >= SSLV2_MIN_HELLO
        && head[2] == 1
        && head[3] == VERSION_MAJOR
        && head[4] <= SSLV2_MAX_MINOR
}

/// Shortest SSLv2-compatible ClientHello after its two-byte header: type, version, three
/// lengths (9), one cipher spec (3), a 16-byte challenge.
const SSLV2_MIN_HELLO: u16 = 9 + 3 + 16;
/// Highest minor version an SSLv2-compatible ClientHello offers (TLS 1.2; RFC 8446 forbids
/// the format for 1.3).
const SSLV2_MAX_MINOR: u8 = 3;

/// Bytes the parser reads from. The kernel implements it over its scratch buffer with a masked
/// index, so that every read is provably in bounds for the verifier; userspace over a slice.
pub trait Input {
    /// Number of readable bytes.
    fn len(&self) -> usize;
    /// Byte `i`. Only called with `i < self.len()`.
    fn byte(&self, i: usize) -> u8;
    /// Whether there is nothing to read.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Input for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        self.get(i).copied().unwrap_or(0)
    }
}

/// Where the parser stands after the bytes it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The ClientHello (or the first record header) continues past the bytes given.
    NeedMore,
    /// The whole ClientHello was read; [`Parser::name`] tells whether it named a host.
    Done,
    /// The bytes do not start a TLS ClientHello.
    NotClientHello,
    /// The bytes start a ClientHello that breaks the grammar; [`Parser::reason`] says how.
    Malformed,
}

/// What a ClientHello came to: exactly one of these per ClientHello, in the kernel's global
/// counters and in `sni-user classify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A server_name was read.
    Sni,
    /// Read to the end without a server_name.
    NoSni,
    /// It breaks the TLS grammar (before its name, if it has one).
    Malformed,
    /// Given up before its name was read.
    Incomplete,
    /// An SSLv2-compatible ClientHello: no extensions, so no name.
    Sslv2,
}

impl Outcome {
    /// Every outcome, in the order reports list them.
    pub const ALL: [Self; 5] = [
        Self::Sni,
        Self::NoSni,
        Self::Malformed,
        Self::Incomplete,
        Self::Sslv2,
    ];

    /// Short snake_case name, stable for logs and JSON (the counters' names).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sni => "sni",
            Self::NoSni => "no_sni",
            Self::Malformed => "malformed",
            Self::Incomplete => "incomplete",
            Self::Sslv2 => "sslv2",
        }
    }
}

/// Why parsing stopped without a ClientHello, for logs and `classify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// Nothing wrong (yet).
    None = 0,
    /// The first record is not a handshake record.
    NotHandshakeRecord,
    /// A record's version does not start with 3.
    BadRecordVersion,
    /// A record is empty or longer than 2^14.
    BadRecordLength,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// The ClientHello is shorter than its fixed fields.
    HelloTooShort,
    /// `legacy_version` is not 3.x.
    BadHelloVersion,
    /// legacy_session_id longer than 32 bytes.
    BadSessionIdLength,
    /// cipher_suites empty or of odd length.
    BadCipherSuitesLength,
    /// legacy_compression_methods empty.
    BadCompressionLength,
    /// The extensions block does not end where the ClientHello does.
    ExtensionsLengthMismatch,
    /// An extension runs past the extensions block.
    ExtensionOverrun,
    /// Two server_name extensions.
    DuplicateServerName,
    /// server_name_list length does not match its extension.
    BadServerNameList,
    /// host_name empty, longer than 255 bytes, or past its list.
    BadNameLength,
    /// host_name is only a dot.
    EmptyName,
    /// A field runs past the ClientHello (a length field lies).
    Overrun,
}

/// TLS alert descriptions a server sends when it refuses a ClientHello (RFC 8446 §6.2).
pub mod alert {
    /// A message arrived that its state does not expect (the first message is not a
    /// ClientHello).
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    /// No set of parameters both sides can use (an SSLv2-compatible ClientHello, which
    /// rustls does not read: OpenSSL answers those with it too).
    pub const HANDSHAKE_FAILURE: u8 = 40;
    /// A field holds a value it must not (a duplicate extension).
    pub const ILLEGAL_PARAMETER: u8 = 47;
    /// A message could not be parsed: a length that lies, a field out of its range.
    pub const DECODE_ERROR: u8 = 50;
    /// The version the client asks for is not one a server may negotiate.
    pub const PROTOCOL_VERSION: u8 = 70;
    /// The server_name names no host here (RFC 6066 §3).
    pub const UNRECOGNIZED_NAME: u8 = 112;
}

impl Reason {
    /// The fatal alert a server answers a ClientHello refused for this reason with, as
    /// OpenSSL does; `None` when the bytes are not a TLS handshake record at all (closing
    /// without an alert is then right: the peer does not speak TLS).
    pub const fn alert(self) -> Option<u8> {
        match self {
            Self::None | Self::NotHandshakeRecord | Self::BadRecordVersion => None,
            Self::NotClientHello => Some(alert::UNEXPECTED_MESSAGE),
            Self::BadHelloVersion => Some(alert::PROTOCOL_VERSION),
            Self::DuplicateServerName => Some(alert::ILLEGAL_PARAMETER),
            Self::EmptyName => Some(alert::UNRECOGNIZED_NAME),
            Self::BadRecordLength
            | Self::HelloTooShort
            | Self::BadSessionIdLength
            | Self::BadCipherSuitesLength
            | Self::BadCompressionLength
            | Self::ExtensionsLengthMismatch
            | Self::ExtensionOverrun
            | Self::BadServerNameList
            | Self::BadNameLength
            | Self::Overrun => Some(alert::DECODE_ERROR),
        }
    }

    /// Short snake_case name, stable for logs and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::NotHandshakeRecord => "not_handshake_record",
            Self::BadRecordVersion => "bad_record_version",
            Self::BadRecordLength => "bad_record_length",
            Self::NotClientHello => "not_client_hello",
            Self::HelloTooShort => "hello_too_short",
            Self::BadHelloVersion => "bad_hello_version",
            Self::BadSessionIdLength => "bad_session_id_length",
            Self::BadCipherSuitesLength => "bad_cipher_suites_length",
            Self::BadCompressionLength => "bad_compression_length",
            Self::ExtensionsLengthMismatch => "extensions_length_mismatch",
            Self::ExtensionOverrun => "extension_overrun",
            Self::DuplicateServerName => "duplicate_server_name",
            Self::BadServerNameList => "bad_server_name_list",
            Self::BadNameLength => "bad_name_length",
            Self::EmptyName => "empty_name",
            Self::Overrun => "overrun",
        }
    }

    const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::NotHandshakeRecord,
            2 => Self::BadRecordVersion,
            3 => Self::BadRecordLength,
            4 => Self::NotClientHello,
            5 => Self::HelloTooShort,
            6 => Self::BadHelloVersion,
            7 => Self::BadSessionIdLength,
            8 => Self::BadCipherSuitesLength,
            9 => Self::BadCompressionLength,
            10 => Self::ExtensionsLengthMismatch,
            11 => Self::ExtensionOverrun,
            12 => Self::DuplicateServerName,
            13 => Self::BadServerNameList,
            14 => Self::BadNameLength,
            15 => Self::EmptyName,
            16 => Self::Overrun,
            _ => Self::None,
        }
    }
}

// Parser status.
const ST_NEED_MORE: u8 = 0;
const ST_DONE: u8 = 1;
const ST_NOT_HELLO: u8 = 2;
const ST_MALFORMED: u8 = 3;

// Flags.
/// Handshake type 1 was read: this is a ClientHello.
const F_CONFIRMED: u8 = 1;
/// A server_name extension was seen.
const F_SNI_EXT: u8 = 2;
/// A complete host name is in `host`.
const F_NAME: u8 = 4;
/// An encrypted_client_hello extension was seen.
const F_ECH: u8 = 8;
/// The first record header's first byte has its high bit set: an SSLv2 record header, if
/// the bytes after it say "ClientHello, version 3.x".
const F_SSLV2_HEADER: u8 = 16;
/// An SSLv2-compatible ClientHello was read (RFC 5246 appendix E.2): it has no extensions,
/// so no server_name.
const F_SSLV2: u8 = 32;
/// The parser reads the whole ClientHello and its JA4 ([`Parser::ja4`]), not only up to the
/// name.
const F_JA4: u8 = 64;

// Stages: the field the parser is in. `int` fields accumulate big-endian into `acc`, `skip`
// fields are passed over, the name is copied.
const S_HS_TYPE: u8 = 0; // int 1
const S_HS_LEN: u8 = 1; // int 3
const S_VERSION: u8 = 2; // int 2
const S_RANDOM: u8 = 3; // skip 32
const S_SID_LEN: u8 = 4; // int 1
const S_SID: u8 = 5; // skip
const S_CS_LEN: u8 = 6; // int 2
const S_CS: u8 = 7; // skip (without JA4)
const S_CIPHER: u8 = 8; // list: cipher suites, up to eight a field (with JA4)
const S_COMP_LEN: u8 = 9; // int 1
const S_COMP: u8 = 10; // skip
const S_EXTS_LEN: u8 = 11; // int 2
const S_EXT_HEAD: u8 = 12; // int 4: extension type and length
const S_EXT_BODY: u8 = 14; // skip
                           // Inside an extension whose length is in `ext_left` (every stage from here on).
const S_SNI_LIST_LEN: u8 = 15; // int 2
const S_SNI_TYPE: u8 = 16; // int 1
const S_SNI_NAME_LEN: u8 = 17; // int 2
const S_SNI_NAME: u8 = 18; // copy
const S_ALPN_LIST_LEN: u8 = 19; // int 2
const S_ALPN_LEN: u8 = 20; // int 1
const S_ALPN_NAME: u8 = 21; // the first value's ends
const S_VERSIONS_LEN: u8 = 22; // int 1
const S_VERSION_ITEM: u8 = 23; // list: versions
const S_SIG_ALGS_LEN: u8 = 24; // int 2
const S_SIG_ALG: u8 = 25; // list: signature algorithms

/// Bytes of a field a step reads at most (but a skipped field's, read in one step): of a
/// name, or of a list of two-byte values (four of them). 16 is past the kernel verifier's
/// budget (one step per `bpf_loop` call, the debug build).
const BYTES_PER_STEP: usize = 8;
/// Extensions nothing reads a step passes over at most before its field (see
/// [`Parser::plain_extensions`]). Browsers send 16 to 20 extensions, and most are read no
/// further than their type.
const PLAIN_EXTENSIONS_PER_STEP: usize = 4;
/// Bytes of the longest integer field: an extension's type and length read together.
const INT_MAX_LEN: usize = 4;
/// Bytes of a TLS record header.
const RECORD_HEADER_LEN: usize = 5;

/// Parse state of one ClientHello; fixed size, plain data, all-zero when new.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Parser {
    /// The host name read so far, normalised as it is copied.
    pub host: HostKey,
    /// ClientHello body bytes not consumed yet.
    hs_left: u32,
    /// Extensions-block bytes not consumed yet.
    exts_left: u32,
    /// Bytes left in the current field.
    need: u32,
    /// Big-endian accumulator of the current integer field.
    acc: u32,
    /// Bytes left in the current TLS record; 0 while reading a record header.
    rec_left: u16,
    /// Bytes left in the current extension, while inside one (stages from `S_SNI_LIST_LEN`).
    ext_left: u16,
    /// Unused: keeps the layout the kernel's maps were sized with (it held the current
    /// extension's type, which nothing reads any more).
    _pad_ext: u16,
    /// Current field (`S_*`).
    stage: u8,
    /// Position within a 5-byte record header.
    rec_hdr: u8,
    /// High byte of a record length being read.
    rec_len_hi: u8,
    /// Records started (saturating).
    records: u8,
    /// `F_*` flags.
    flags: u8,
    /// `ST_*` status.
    status: u8,
    /// [`Reason`] as a byte.
    reason: u8,
    _pad: u8,
    /// Bytes left in the list being read value by value (cipher suites, versions, signature
    /// algorithms).
    list_left: u16,
    /// What the JA4 is made of, gathered with [`F_JA4`].
    ja4: Ja4State,
}
const _: () = assert!(core::mem::size_of::<Parser>() == Parser::SIZE);

impl Default for Parser {
    fn default() -> Self {
        Self::NEW
    }
}

impl core::fmt::Debug for Parser {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Parser")
            .field("progress", &self.progress())
            .field("reason", &self.reason())
            .field("host", &self.host)
            .field("stage", &self.stage)
            .field("flags", &self.flags)
            .field("records", &self.records)
            .finish()
    }
}

impl Parser {
    /// Size in bytes (it is stored in BPF maps).
    pub const SIZE: usize = 288 + Ja4State::SIZE;

    /// A parser at the first byte of a stream that reads up to the name.
    pub const NEW: Self = Self::new(false);

    /// A parser at the first byte of a stream that reads the whole ClientHello and its JA4
    /// when `ja4`, else up to the name.
    pub const fn new(ja4: bool) -> Self {
        Self {
            host: HostKey::EMPTY,
            hs_left: 0,
            exts_left: 0,
            need: 1,
            acc: 0,
            rec_left: 0,
            ext_left: 0,
            _pad_ext: 0,
            stage: S_HS_TYPE,
            rec_hdr: 0,
            rec_len_hi: 0,
            records: 0,
            flags: if ja4 { F_JA4 } else { 0 },
            status: ST_NEED_MORE,
            reason: 0,
            _pad: 0,
            list_left: 0,
            ja4: Ja4State::NEW,
        }
    }

    /// Steps needed at most to consume `len` bytes (see the module docs).
    pub const fn max_steps(len: usize) -> usize {
        2 * len + 2
    }

    /// Feeds the next bytes of the stream; returns where the parser stands after them.
    ///
    /// Bytes after the end of the ClientHello are ignored.
    pub fn feed(&mut self, bytes: &[u8]) -> Progress {
        let mut pos = 0;
        for _ in 0..Self::max_steps(bytes.len()) {
            if !self.step(bytes, &mut pos) {
                break;
            }
        }
        self.progress()
    }

    /// Where the parser stands.
    pub fn progress(&self) -> Progress {
        match self.status {
            ST_NEED_MORE => Progress::NeedMore,
            ST_DONE => Progress::Done,
            ST_NOT_HELLO => Progress::NotClientHello,
            _ => Progress::Malformed,
        }
    }

    /// The complete, normalised host name, once read (even before the ClientHello ends).
    pub fn name(&self) -> Option<&HostKey> {
        (self.flags & F_NAME != 0).then_some(&self.host)
    }

    /// Whether a complete name was read.
    #[inline(always)]
    pub fn has_name(&self) -> bool {
        self.flags & F_NAME != 0
    }

    /// Whether the bytes were recognised as a ClientHello (handshake type 1 read).
    #[inline(always)]
    pub fn is_client_hello(&self) -> bool {
        self.flags & F_CONFIRMED != 0
    }

    /// Whether the next bytes of the stream are needed: the ClientHello goes on, and either
    /// its JA4 is read or its name (if it has one) has not been read yet. Without JA4, once
    /// the name is read, nothing more is needed to count or route the flow.
    #[inline(always)]
    pub fn wants_more(&self) -> bool {
        self.status == ST_NEED_MORE && (self.flags & F_JA4 != 0 || !self.has_name())
    }

    /// Whether this parser reads the whole ClientHello and its JA4 ([`Parser::new`]).
    #[inline(always)]
    pub fn reads_ja4(&self) -> bool {
        self.flags & F_JA4 != 0
    }

    /// What the JA4 of a ClientHello read to its end is made of; `None` without JA4, before
    /// the end, for a broken ClientHello or an SSLv2-compatible one.
    #[inline(always)]
    pub fn ja4(&self) -> Option<&Ja4State> {
        (self.flags & (F_JA4 | F_SSLV2) == F_JA4 && self.status == ST_DONE).then_some(&self.ja4)
    }

    /// What the ClientHello came to, as counted: with the bytes read so far, a ClientHello
    /// still wanting more is `Incomplete`. One whose name was read is `Sni` even if it breaks
    /// the grammar or is given up after its name: its host is known, and judged, as when
    /// reading stopped at the name (the terminator still refuses a broken one).
    #[inline(always)]
    pub fn outcome(&self) -> Outcome {
        match self.progress() {
            _ if self.has_name() => Outcome::Sni,
            Progress::Malformed | Progress::NotClientHello => Outcome::Malformed,
            _ if self.flags & F_SSLV2 != 0 => Outcome::Sslv2,
            Progress::Done => Outcome::NoSni,
            Progress::NeedMore => Outcome::Incomplete,
        }
    }

    /// Whether an `encrypted_client_hello` extension was seen so far.
    #[inline(always)]
    pub fn has_ech(&self) -> bool {
        self.flags & F_ECH != 0
    }

    /// The fatal alert a server answers this ClientHello with when it refuses it: by the
    /// parser's [`Reason`], or `handshake_failure` for an SSLv2-compatible one; `None` for
    /// bytes that are not TLS.
    pub fn refusal_alert(&self) -> Option<u8> {
        if self.flags & F_SSLV2 != 0 {
            return Some(alert::HANDSHAKE_FAILURE);
        }
        self.reason().alert()
    }

    /// Why parsing failed, if it did.
    pub fn reason(&self) -> Reason {
        Reason::from_u8(self.reason)
    }

    /// Number of TLS records started so far.
    pub fn records(&self) -> u8 {
        self.records
    }

    /// Runs one bounded step over `input` from `*pos`: [`Parser::leap`], then
    /// [`Parser::field_step`]. Returns whether it made progress: false once the input is used
    /// up or parsing has ended (a step that leapt and then met either returns true; the next
    /// one returns false).
    #[inline(always)]
    pub fn step<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> bool {
        let passed = self.leap(input, pos);
        self.field_step(input, pos) || passed
    }

    /// The first half of a step, a leap over what needs no step of its own: at the fields of
    /// fixed order, all of them straight through (`Parser::fixed_fields`); at the start of
    /// the body of an extension whose values it reads, the lengths in front of the first
    /// value (`Parser::value_lengths`); at an extension, the extensions nothing reads
    /// (`Parser::plain_extensions`). Each reads only what the input and the record hold
    /// whole, and leaves the parser as the steps over the same bytes would have. Returns
    /// whether it moved.
    #[inline(always)]
    pub fn leap<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> bool {
        match self.stage {
            S_HS_TYPE | S_COMP_LEN => self.fixed_fields(input, pos),
            S_EXT_HEAD => self.plain_extensions(input, pos),
            S_SNI_LIST_LEN | S_ALPN_LIST_LEN | S_SIG_ALGS_LEN | S_VERSIONS_LEN => {
                self.value_lengths(input, pos)
            }
            // A value, an extension's body, a list: read by the field step.
            _ => false,
        }
    }

    /// At the start of the body of an extension whose values the parser reads, reads the
    /// lengths in front of its first value straight through, when the input from `*pos`, the
    /// record and every enclosing length hold them and every check passes: server_name's
    /// list length, name type and name length (five bytes); ALPN's list length and first
    /// protocol's length (three); the length of the signature algorithms' list (two) or of
    /// the supported versions' (one). It leaves the parser as the steps over those lengths
    /// would have, and returns whether it read them; anything else it leaves to the steps.
    #[inline(always)]
    fn value_lengths<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> bool {
        // Bytes of the lengths, and the first one's (a step may have read part of it).
        let (n, first): (u16, u32) = match self.stage {
            S_SNI_LIST_LEN => (5, 2),
            S_ALPN_LIST_LEN => (3, 2),
            S_SIG_ALGS_LEN => (2, 2),
            _ => (1, 1),
        };
        let at = *pos;
        if self.status != ST_NEED_MORE || self.need != first || !self.holds(input, at, n) {
            return false;
        }
        let be16 = |i: usize| u16::from_be_bytes([input.byte(at + i), input.byte(at + i + 1)]);
        // What the extension has left after the lengths.
        let rest = self.ext_left - n;
        match self.stage {
            S_SNI_LIST_LEN => {
                let name = be16(3);
                if be16(0) != self.ext_left - 2
                    || u32::from(input.byte(at + 2)) != NAME_TYPE_HOST
                    || name == 0
                    || name > rest
                    || usize::from(name) > MAX_NAME_LEN
                {
                    return false;
                }
                self.took(n, pos);
                self.enter(S_SNI_NAME, u32::from(name));
            }
            S_ALPN_LIST_LEN => {
                let protocol = u16::from(input.byte(at + 2));
                if protocol == 0 || protocol > rest {
                    return false;
                }
                self.took(n, pos);
                self.enter(S_ALPN_NAME, u32::from(protocol));
            }
            // The length read whole, as after its step: in `acc`, nothing left of the field
            // (what stays when the list has no room and the ClientHello ends there).
            S_SIG_ALGS_LEN => {
                self.list_left = be16(0);
                self.took(n, pos);
                self.read_whole(u32::from(self.list_left));
                self.list_items(S_SIG_ALG);
            }
            _ => {
                self.list_left = u16::from(input.byte(at));
                self.took(n, pos);
                self.read_whole(u32::from(self.list_left));
                self.list_items(S_VERSION_ITEM);
            }
        }
        true
    }

    /// Whether the input from `at`, the record, the ClientHello, its extensions and the
    /// current extension all hold `n` more bytes. (With [`Parser::took`], a second way of
    /// charging bytes beside `consume`, whose checks by stage cost the ClientHello 30 ns with
    /// JA4 here: `bench/results/2026-11-30T15-33-39Z-39d759bb9a-ab.md`.)
    #[inline(always)]
    fn holds<I: Input + ?Sized>(&self, input: &I, at: usize, n: u16) -> bool {
        let len = input.len();
        at < len
            && len - at >= usize::from(n)
            && self.rec_left >= n
            && self.hs_left >= u32::from(n)
            && self.exts_left >= u32::from(n)
            && self.ext_left >= n
    }

    /// The current integer field read whole, `v`, as its step leaves it.
    #[inline(always)]
    fn read_whole(&mut self, v: u32) {
        self.acc = v;
        self.need = 0;
    }

    /// `n` bytes of the current extension read, what [`Parser::holds`] said there is room
    /// for.
    #[inline(always)]
    fn took(&mut self, n: u16, pos: &mut usize) {
        self.rec_left -= n;
        self.hs_left -= u32::from(n);
        self.exts_left -= u32::from(n);
        self.ext_left -= n;
        *pos += usize::from(n);
    }

    /// Reads the ClientHello's fields of fixed order straight through, without a step each,
    /// each group only when the input from `*pos` and the record hold all of it and every
    /// check passes:
    /// - at the first byte of the stream, the record header, the handshake header, the
    ///   version, the random, the session ID and the cipher suites' length; then, without
    ///   JA4 (which reads the suites value by value), the suites when they are held too, and
    ///   the group below;
    /// - at the compression methods' length, the methods and the extensions' length.
    ///
    /// It leaves the parser as field steps over those fields would have (the fuzzer compares
    /// the two whole, `fuzz/fuzz_targets/hello_chunks.rs`), and returns whether it read any.
    /// Anything else (a field past the input or the record, a value a check refuses, an
    /// SSLv2-compatible ClientHello) it leaves to the steps, which read or refuse it as usual.
    #[inline(always)]
    fn fixed_fields<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> bool {
        if self.status != ST_NEED_MORE {
            return false;
        }
        let head = self.stage == S_HS_TYPE && self.records == 0 && self.rec_hdr == 0;
        if head && !self.fixed_head(input, pos) {
            return false;
        }
        // Without JA4 the head may end here; with it, a later step does.
        let tail = self.stage == S_COMP_LEN && self.need == 1 && self.fixed_tail(input, pos);
        head || tail
    }

    /// [`Parser::fixed_fields`] from the first byte of the stream to the cipher suites (and,
    /// without JA4, past them when the input holds them).
    #[inline(always)]
    fn fixed_head<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> bool {
        // Record header 5, handshake type 1 and length 3, version 2, random 32, session ID
        // length 1: the session ID starts at 44.
        const SID_AT: usize = 44;
        let at = *pos;
        let len = input.len();
        if at >= len || len - at < SID_AT {
            return false;
        }
        let b = |i: usize| input.byte(at + i);
        let rec_len = u16::from_be_bytes([b(3), b(4)]);
        let hs_len = u32::from_be_bytes([0, b(6), b(7), b(8)]);
        let sid = b(43);
        // Its end: the cipher suites' length, two bytes after the session ID.
        let end = SID_AT + usize::from(sid) + 2;
        if b(0) != CONTENT_TYPE_HANDSHAKE
            || b(1) != VERSION_MAJOR
            || rec_len == 0
            || rec_len > MAX_RECORD_LEN
            || u32::from(b(5)) != HANDSHAKE_CLIENT_HELLO
            || hs_len < MIN_HELLO_LEN
            || b(9) != VERSION_MAJOR
            || u32::from(sid) > MAX_SESSION_ID_LEN
            || len - at < end
        {
            return false;
        }
        // What the record, and the ClientHello, hold past their headers.
        let in_record = (end - RECORD_HEADER_LEN) as u16;
        let in_hello = (end - RECORD_HEADER_LEN - 4) as u32;
        let cs = u32::from(u16::from_be_bytes([b(end - 2), b(end - 1)]));
        if rec_len < in_record || hs_len < in_hello || cs < 2 || !cs.is_multiple_of(2) {
            return false;
        }
        self.records = 1;
        self.rec_len_hi = b(3);
        self.rec_left = rec_len - in_record;
        self.flags |= F_CONFIRMED;
        self.hs_left = hs_len - in_hello;
        self.ja4.legacy_version = u16::from_be_bytes([b(9), b(10)]);
        *pos = at + end;
        if self.flags & F_JA4 != 0 {
            self.list_left = cs as u16;
            self.enter_values(S_CIPHER, cs as u16);
        } else {
            self.enter(S_CS, cs);
            self.skip_whole(len, pos);
        }
        true
    }

    /// [`Parser::fixed_fields`] from the compression methods' length to the first extension:
    /// the methods, and the extensions' length (which must be all the ClientHello has left,
    /// and not zero).
    #[inline(always)]
    fn fixed_tail<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> bool {
        let at = *pos;
        let len = input.len();
        if at >= len {
            return false;
        }
        let comp = usize::from(input.byte(at));
        // Its end: the extensions' length, two bytes after the methods.
        let end = 1 + comp + 2;
        if comp == 0
            || len - at < end
            || end > usize::from(self.rec_left)
            || end as u32 > self.hs_left
        {
            return false;
        }
        let exts = u32::from(u16::from_be_bytes([
            input.byte(at + end - 2),
            input.byte(at + end - 1),
        ]));
        if exts == 0 || exts != self.hs_left - end as u32 {
            return false;
        }
        self.rec_left -= end as u16;
        self.hs_left = exts;
        self.exts_left = exts;
        *pos = at + end;
        self.enter(S_EXT_HEAD, INT_MAX_LEN as u32);
        true
    }

    /// The second half of a step: one field (or part of one), and the field passed over after
    /// it when the input holds it. Returns whether another step can make progress.
    #[inline(always)]
    pub fn field_step<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> bool {
        if self.status != ST_NEED_MORE {
            return false;
        }
        let skip = is_skip(self.stage);
        if skip && self.need == 0 {
            // A zero-length field ends without input.
            self.field_done();
            return true;
        }
        let at = *pos;
        let len = input.len();
        if at >= len {
            return false;
        }
        if self.rec_left == 0 {
            // A record header: as many of its five bytes as the input has.
            let mut at = at;
            for _ in 0..RECORD_HEADER_LEN {
                if at >= len || self.rec_left != 0 || self.status != ST_NEED_MORE {
                    break;
                }
                self.record_header_byte(input.byte(at));
                at += 1;
            }
            *pos = at;
            return true;
        }
        // As many bytes of the field as the input, the record and the field have: all of a
        // skipped field, up to `BYTES_PER_STEP` of any other (an integer has at most four).
        let take = min3(len - at, usize::from(self.rec_left), self.need as usize);
        let take = if skip || take < BYTES_PER_STEP {
            take
        } else {
            BYTES_PER_STEP
        };
        // `take` is at most `rec_left` (a u16), so it fits in u32.
        let take32 = take as u32;
        if !self.consume(take32) {
            return false;
        }
        if !skip {
            self.absorb(input, at, take);
        }
        *pos = at + take;
        self.need -= take32;
        if self.need == 0 {
            self.field_done();
            self.skip_whole(len, pos);
        }
        true
    }

    /// The leap at an extension ([`Parser::leap`]): passes over the extensions that come
    /// next while each is one the parser reads nothing of but its type (not server_name, nor
    /// one whose values JA4 takes) and the input from `*pos`, the record and the extensions
    /// block hold all of it, up to [`PLAIN_EXTENSIONS_PER_STEP`]; returns whether it passed
    /// over any. It leaves the parser as the steps of those extensions would have; anything
    /// else (a partial header, an extension past the input, the record or the block, one the
    /// parser reads, the last one) is left to [`Parser::field_step`], which reads or refuses
    /// it as usual.
    #[inline(always)]
    fn plain_extensions<I: Input + ?Sized>(&mut self, input: &I, pos: &mut usize) -> bool {
        // At an extension's first byte. Passing over one that is not the last leaves the
        // parser there again (what `next_extension` would set), with its status and name
        // unchanged: this holds for every pass.
        if !self.wants_more() || self.stage != S_EXT_HEAD || self.need != INT_MAX_LEN as u32 {
            return false;
        }
        let len = input.len();
        let mut passed = false;
        for _ in 0..PLAIN_EXTENSIONS_PER_STEP {
            let at = *pos;
            if at >= len || len - at < INT_MAX_LEN {
                return passed;
            }
            let ty = u16::from_be_bytes([input.byte(at), input.byte(at + 1)]);
            let body = u16::from_be_bytes([input.byte(at + 2), input.byte(at + 3)]);
            let n = INT_MAX_LEN + usize::from(body);
            // The last extension is left to the field's step, which ends the ClientHello and
            // leaves the state as it always has.
            if self.reads_extension(ty)
                || n > len - at
                || n > usize::from(self.rec_left)
                || n as u32 >= self.exts_left
                || !self.consume(n as u32)
            {
                return passed;
            }
            self.begin_extension(ty, body);
            *pos = at + n;
            passed = true;
        }
        passed
    }

    /// Whether the parser reads extension `ty` past its type and length: server_name, and
    /// with JA4 the ALPN, supported_versions and signature_algorithms it takes values from.
    /// The one list of them: the field's step reads only these (and passes over one JA4 no
    /// longer wants), `plain_extensions` leaves them to it.
    #[inline(always)]
    fn reads_extension(&self, ty: u16) -> bool {
        match ty {
            EXT_SERVER_NAME => true,
            ja4_ext::ALPN | ja4_ext::SUPPORTED_VERSIONS | ja4_ext::SIGNATURE_ALGORITHMS => {
                self.flags & F_JA4 != 0
            }
            _ => false,
        }
    }

    /// An extension of type `ty` and `len` bytes starts (its header read): counted for JA4,
    /// encrypted_client_hello noted.
    #[inline(always)]
    fn begin_extension(&mut self, ty: u16, len: u16) {
        if self.flags & F_JA4 != 0 {
            self.ja4.extension(ty);
        }
        if ty == EXT_ECH {
            self.flags |= F_ECH;
        }
        self.ext_left = len;
    }

    /// The `take` bytes at `at` of the current field: an integer's (into `acc`), the name's
    /// (copied, lowercased), the first ALPN value's (its ends kept), or a list's (each value
    /// gathered as its second byte comes; `acc` holds the first meanwhile). The stage is
    /// looked at once, then its bytes taken in a loop of its own.
    #[inline(always)]
    fn absorb<I: Input + ?Sized>(&mut self, input: &I, at: usize, take: usize) {
        match self.stage {
            S_SNI_NAME => {
                for k in 0..BYTES_PER_STEP {
                    if k < take {
                        let i = usize::from(self.host.len);
                        if i < MAX_NAME_LEN {
                            self.host.name[i] = lower(input.byte(at + k));
                            self.host.len += 1;
                        }
                    }
                }
            }
            S_ALPN_NAME => {
                // `acc` counts the value's bytes here.
                for k in 0..BYTES_PER_STEP {
                    if k < take {
                        self.ja4.alpn_byte(self.acc, input.byte(at + k));
                        self.acc += 1;
                    }
                }
            }
            S_CIPHER | S_VERSION_ITEM | S_SIG_ALG => {
                // The field is a whole number of values: a value ends at each byte after
                // which an even number of the field's bytes are left.
                let left = self.need as usize;
                for k in 0..BYTES_PER_STEP {
                    if k < take {
                        self.acc = (self.acc << 8) | u32::from(input.byte(at + k));
                        if (left - k - 1).is_multiple_of(2) {
                            self.list_value(self.acc as u16);
                            self.acc = 0;
                        }
                    }
                }
            }
            _ => {
                for k in 0..INT_MAX_LEN {
                    if k < take {
                        self.acc = (self.acc << 8) | u32::from(input.byte(at + k));
                    }
                }
            }
        }
    }

    /// A value of the list being read (by stage).
    #[inline(always)]
    fn list_value(&mut self, v: u16) {
        match self.stage {
            S_CIPHER => self.ja4.cipher(v),
            S_VERSION_ITEM => self.ja4.supported_version(v),
            _ => self.ja4.sig_alg(v),
        }
    }

    fn record_header_byte(&mut self, b: u8) {
        if self.flags & F_SSLV2_HEADER != 0 {
            return self.sslv2_header_byte(b);
        }
        match self.rec_hdr {
            0 => {
                if b & 0x80 != 0 && self.records == 0 {
                    self.flags |= F_SSLV2_HEADER;
                    self.rec_len_hi = b & 0x7f;
                } else if b != CONTENT_TYPE_HANDSHAKE {
                    return self.record_fail(Reason::NotHandshakeRecord);
                }
            }
            1 => {
                if b != VERSION_MAJOR {
                    return self.record_fail(Reason::BadRecordVersion);
                }
            }
            2 => {} // Minor version: any (clients send 1 or 3).
            3 => self.rec_len_hi = b,
            _ => {
                let len = u16::from_be_bytes([self.rec_len_hi, b]);
                if len == 0 || len > MAX_RECORD_LEN {
                    return self.malformed(Reason::BadRecordLength);
                }
                self.rec_left = len;
                self.rec_hdr = 0;
                self.records = self.records.saturating_add(1);
                return;
            }
        }
        self.rec_hdr += 1;
    }

    /// Bytes 1 to 4 of a stream whose first byte has its high bit set: a length that holds a
    /// ClientHello, message type 1, version 3.0 to 3.3 make it an SSLv2-compatible
    /// ClientHello ([`starts_sslv2_client_hello`]), read to its outcome there (nothing after
    /// can name a host); anything else is not TLS.
    fn sslv2_header_byte(&mut self, b: u8) {
        match self.rec_hdr {
            1 if u16::from_be_bytes([self.rec_len_hi, b]) >= SSLV2_MIN_HELLO => {}
            2 if b == 1 => {}
            3 if b == VERSION_MAJOR => {}
            4 if b <= SSLV2_MAX_MINOR => {
                self.flags |= F_SSLV2 | F_CONFIRMED;
                return self.done();
            }
            _ => return self.record_fail(Reason::NotHandshakeRecord),
        }
        self.rec_hdr += 1;
    }

    /// A bad first record header means "not TLS"; a bad later one, a broken ClientHello.
    fn record_fail(&mut self, reason: Reason) {
        if self.records == 0 {
            self.status = ST_NOT_HELLO;
            self.reason = reason as u8;
        } else {
            self.malformed(reason);
        }
    }

    /// Accounts `n` bytes of the current field against the record and every enclosing length.
    #[inline(always)]
    fn consume(&mut self, n: u32) -> bool {
        // n <= rec_left was ensured by the caller.
        self.rec_left = self.rec_left.saturating_sub(n as u16);
        if self.stage >= S_VERSION {
            if n > self.hs_left {
                self.malformed(Reason::Overrun);
                return false;
            }
            self.hs_left -= n;
        }
        if self.stage >= S_EXT_HEAD {
            if n > self.exts_left {
                self.malformed(Reason::ExtensionOverrun);
                return false;
            }
            self.exts_left -= n;
        }
        if self.stage >= S_SNI_LIST_LEN {
            if n > u32::from(self.ext_left) {
                self.malformed(Reason::BadServerNameList);
                return false;
            }
            self.ext_left -= n as u16;
        }
        true
    }

    fn enter(&mut self, stage: u8, need: u32) {
        self.stage = stage;
        self.need = need;
        self.acc = 0;
    }

    fn malformed(&mut self, reason: Reason) {
        self.status = ST_MALFORMED;
        self.reason = reason as u8;
    }

    fn done(&mut self) {
        self.status = ST_DONE;
    }

    /// Passes over what is left of the current extension.
    fn rest_of_extension(&mut self) {
        let rest = u32::from(self.ext_left);
        self.skip_extension(rest);
    }

    /// Passes over `len` bytes of extension body, then goes to the next extension; at once
    /// when there is nothing to pass over.
    fn skip_extension(&mut self, len: u32) {
        if len == 0 {
            return self.next_extension();
        }
        self.enter(S_EXT_BODY, len);
    }

    /// The next extension, or the end of the ClientHello after the last one.
    fn next_extension(&mut self) {
        if self.exts_left == 0 {
            return self.done();
        }
        self.enter(S_EXT_HEAD, INT_MAX_LEN as u32);
    }

    /// The next values of the list JA4 reads in the current extension (supported versions
    /// or signature algorithms) as stage `item`, or the rest of the extension when the list,
    /// or the extension, has no room for another.
    fn list_items(&mut self, item: u8) {
        let room = if self.list_left < self.ext_left {
            self.list_left
        } else {
            self.ext_left
        };
        if room < 2 {
            return self.rest_of_extension();
        }
        self.enter_values(item, room);
    }

    /// Enters list stage `item` for as many whole two-byte values as `room` (what the list,
    /// and the extension it is in, have left) holds, up to a step's bytes.
    fn enter_values(&mut self, item: u8, room: u16) {
        let n = if usize::from(room) < BYTES_PER_STEP {
            room & !1
        } else {
            BYTES_PER_STEP as u16
        };
        self.list_left = self.list_left.saturating_sub(n);
        self.enter(item, u32::from(n));
    }

    /// A field passed over is complete: on to the next.
    #[inline(always)]
    fn skipped(&mut self) {
        match self.stage {
            S_RANDOM => self.enter(S_SID_LEN, 1),
            S_SID => self.enter(S_CS_LEN, 2),
            S_CS => self.enter(S_COMP_LEN, 1),
            S_COMP => {
                if self.hs_left == 0 {
                    // No extensions at all (SSLv3-style ClientHello).
                    return self.done();
                }
                self.enter(S_EXTS_LEN, 2);
            }
            // S_EXT_BODY, the only other field passed over. (A branch of its own for it costs
            // the verifier more than the program's budget.)
            _ => self.next_extension(),
        }
    }

    /// Passes over the current field within this step, if it is one passed over (the random,
    /// the session ID, the cipher suites without JA4, the compression methods, an extension's
    /// body) and the input from `*pos` (of `len` bytes) and the record hold all of it: a field
    /// to skip that follows the one just read takes no step of its own.
    #[inline(always)]
    fn skip_whole(&mut self, len: usize, pos: &mut usize) {
        if self.status != ST_NEED_MORE || !is_skip(self.stage) {
            return;
        }
        let n = self.need;
        if n as usize > len.saturating_sub(*pos) || n > u32::from(self.rec_left) {
            return;
        }
        if !self.consume(n) {
            return;
        }
        *pos += n as usize;
        self.need = 0;
        self.skipped();
    }

    /// The current field is complete: check it and move to the next.
    fn field_done(&mut self) {
        let v = self.acc;
        match self.stage {
            S_HS_TYPE => {
                if v != HANDSHAKE_CLIENT_HELLO {
                    self.status = ST_NOT_HELLO;
                    self.reason = Reason::NotClientHello as u8;
                    return;
                }
                self.flags |= F_CONFIRMED;
                self.enter(S_HS_LEN, 3);
            }
            S_HS_LEN => {
                if v < MIN_HELLO_LEN {
                    return self.malformed(Reason::HelloTooShort);
                }
                self.hs_left = v;
                self.enter(S_VERSION, 2);
            }
            S_VERSION => {
                if v >> 8 != u32::from(VERSION_MAJOR) {
                    return self.malformed(Reason::BadHelloVersion);
                }
                self.ja4.legacy_version = v as u16;
                self.enter(S_RANDOM, 32);
            }
            S_RANDOM | S_SID | S_CS | S_COMP | S_EXT_BODY => self.skipped(),
            S_SID_LEN => {
                if v > MAX_SESSION_ID_LEN {
                    return self.malformed(Reason::BadSessionIdLength);
                }
                self.enter(S_SID, v);
            }
            S_CS_LEN => {
                if v < 2 || !v.is_multiple_of(2) {
                    return self.malformed(Reason::BadCipherSuitesLength);
                }
                if self.flags & F_JA4 != 0 {
                    self.list_left = v as u16;
                    return self.enter_values(S_CIPHER, v as u16);
                }
                self.enter(S_CS, v);
            }
            S_CIPHER => {
                if self.list_left == 0 {
                    return self.enter(S_COMP_LEN, 1);
                }
                self.enter_values(S_CIPHER, self.list_left);
            }
            S_COMP_LEN => {
                if v == 0 {
                    return self.malformed(Reason::BadCompressionLength);
                }
                self.enter(S_COMP, v);
            }
            S_EXTS_LEN => {
                if v != self.hs_left {
                    return self.malformed(Reason::ExtensionsLengthMismatch);
                }
                self.exts_left = v;
                if v == 0 {
                    return self.done();
                }
                self.enter(S_EXT_HEAD, 4);
            }
            S_EXT_HEAD => {
                let ty = (v >> 16) as u16;
                let v = v & 0xffff;
                if v > self.exts_left {
                    return self.malformed(Reason::ExtensionOverrun);
                }
                // Inner lengths of the extensions JA4 reads are not checked: a lie only ends
                // the reading of the values early (`list_items`).
                self.begin_extension(ty, v as u16);
                match ty {
                    _ if !self.reads_extension(ty) => self.skip_extension(v),
                    EXT_SERVER_NAME => {
                        if self.flags & F_SNI_EXT != 0 {
                            return self.malformed(Reason::DuplicateServerName);
                        }
                        // Room for the list's length and one entry's header at least; said
                        // now, rather than after waiting for bytes past the extension.
                        if v < 5 {
                            return self.malformed(Reason::BadServerNameList);
                        }
                        self.flags |= F_SNI_EXT;
                        self.enter(S_SNI_LIST_LEN, 2);
                    }
                    ja4_ext::ALPN if v >= 4 && self.ja4.wants_alpn() => {
                        self.ja4.alpn_seen();
                        self.enter(S_ALPN_LIST_LEN, 2);
                    }
                    ja4_ext::SUPPORTED_VERSIONS if v >= 1 => self.enter(S_VERSIONS_LEN, 1),
                    ja4_ext::SIGNATURE_ALGORITHMS if v >= 2 && self.ja4.wants_sig_algs() => {
                        self.ja4.sig_algs_seen();
                        self.enter(S_SIG_ALGS_LEN, 2);
                    }
                    _ => self.skip_extension(v),
                }
            }
            S_ALPN_LIST_LEN => self.enter(S_ALPN_LEN, 1),
            S_ALPN_LEN => {
                if v == 0 || v > u32::from(self.ext_left) {
                    return self.rest_of_extension();
                }
                self.enter(S_ALPN_NAME, v);
            }
            S_ALPN_NAME => self.rest_of_extension(),
            S_VERSIONS_LEN => {
                self.list_left = v as u16;
                self.list_items(S_VERSION_ITEM);
            }
            S_VERSION_ITEM => self.list_items(S_VERSION_ITEM),
            S_SIG_ALGS_LEN => {
                self.list_left = v as u16;
                self.list_items(S_SIG_ALG);
            }
            S_SIG_ALG => self.list_items(S_SIG_ALG),
            S_SNI_LIST_LEN => {
                // The list fills the extension and holds at least one entry header.
                if v != u32::from(self.ext_left) || v < 3 {
                    return self.malformed(Reason::BadServerNameList);
                }
                self.enter(S_SNI_TYPE, 1);
            }
            S_SNI_TYPE => {
                if v != NAME_TYPE_HOST {
                    // An unknown NameType: no host name here; pass over the rest.
                    return self.rest_of_extension();
                }
                self.enter(S_SNI_NAME_LEN, 2);
            }
            S_SNI_NAME_LEN => {
                if v == 0 || v > u32::from(self.ext_left) || v > MAX_NAME_LEN as u32 {
                    return self.malformed(Reason::BadNameLength);
                }
                self.enter(S_SNI_NAME, v);
            }
            S_SNI_NAME => {
                // Normalise: drop one trailing dot (the bytes were lowercased on copy).
                let len = usize::from(self.host.len);
                if len > 0 && len <= MAX_NAME_LEN && self.host.name[len - 1] == b'.' {
                    self.host.name[len - 1] = 0;
                    self.host.len -= 1;
                }
                if self.host.len == 0 {
                    return self.malformed(Reason::EmptyName);
                }
                // RFC 6066 §3 allows one host_name; every client sends exactly one entry.
                // Bytes after it mean the length fields disagree: treat as malformed rather
                // than guess which length is the lie.
                if self.ext_left != 0 {
                    return self.malformed(Reason::BadServerNameList);
                }
                self.flags |= F_NAME;
                self.next_extension();
            }
            _ => self.malformed(Reason::Overrun),
        }
    }
}

#[inline(always)]
fn min3(a: usize, b: usize, c: usize) -> usize {
    let m = if a < b { a } else { b };
    if m < c {
        m
    } else {
        c
    }
}
