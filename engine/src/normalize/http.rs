//! HTTP transcripts (`.http` payloads) shared by the normalizers.
//!
//! A transcript is what `curl -v` or a hand-written fixture shows: request and status lines,
//! headers, a blank line and a body, for one or more exchanges, with CRLF or LF line ends:
//!
//! ```text
//! GET /latest/meta-data/spot/instance-action HTTP/1.1
//! Host: 169.254.169.254
//!
//! HTTP/1.1 200 OK
//! Content-Type: text/plain
//!
//! {"action": "terminate", "time": "2017-09-18T08:22:00Z"}
//! ```
//!
//! [`parse`] returns the last response, with the request line it answered. Errors are
//! [`Error`]s for the caller to word as its own [`NormalizeError`](super::NormalizeError);
//! their `Display` is the wording of the transcript normalizers.

use std::fmt;

use super::quote;

/// What the text holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Any number of exchanges (request and status lines); a body runs to the next request or
    /// status line.
    Transcript,
    /// Exactly one response: a status line with a status of 100 to 599, headers, a blank line,
    /// and the rest of the text as its body, whatever it holds.
    Response,
}

/// A request line: `GET /path HTTP/1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    /// The method (upper-case ASCII, 1 to 10 letters).
    pub(crate) method: &'a str,
    /// The request target as written (`/latest/api/token`, with any query).
    pub(crate) target: &'a str,
}

/// The last response of a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response<'a> {
    /// The status code: any three digits in a [`Form::Transcript`].
    pub(crate) status: u16,
    /// The headers in order, names and values trimmed.
    pub(crate) headers: Vec<(&'a str, &'a str)>,
    /// The body as written (line ends kept): up to the next exchange, or the end of the text.
    pub(crate) body: &'a str,
    /// How many lines of the text come before the body (to give body errors the line in the
    /// whole payload).
    pub(crate) body_line: usize,
    /// The request this response answered: the last request line since the previous response.
    pub(crate) request: Option<Request<'a>>,
}

impl<'a> Response<'a> {
    /// The first header called `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&'a str> {
        self.header_values(name).next()
    }

    /// Every header called `name` (case-insensitive), in order.
    pub(crate) fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The request target this response answered, if the transcript shows the request.
    pub(crate) fn target(&self) -> Option<&'a str> {
        self.request.map(|r| r.target)
    }

    /// The body trimmed, with CRLF line ends as LF.
    pub(crate) fn text(&self) -> String {
        self.body.trim().replace("\r\n", "\n")
    }
}

/// Why a text is not a transcript. Lines are 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Error<'a> {
    /// A line that should start an exchange is not a request or status line (for
    /// [`Form::Response`], not a status line with a status of 100 to 599).
    StartLine {
        /// Its number.
        line: usize,
        /// The line.
        text: &'a str,
    },
    /// A header line without a `:`.
    Header {
        /// Its number.
        line: usize,
        /// The line.
        text: &'a str,
    },
    /// No response in the text (only requests, or nothing at all).
    NoResponse,
}

impl fmt::Display for Error<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::StartLine { line, text } => write!(
                f,
                "HTTP transcript line {line}: expected a request or status line, found \"{}\"",
                quote(text)
            ),
            Error::Header { line, text } => write!(
                f,
                "HTTP transcript line {line}: expected a header `Name: value`, found \"{}\"",
                quote(text)
            ),
            Error::NoResponse => f.write_str("an HTTP transcript without a response"),
        }
    }
}

/// Whether the text's first non-blank line is a request or status line.
pub(crate) fn is_transcript(text: &str) -> bool {
    let first = text.trim_start().lines().next().unwrap_or("");
    request_line(first).is_some() || status_line(first).is_some()
}

/// `METHOD target HTTP/x`.
fn request_line(line: &str) -> Option<Request<'_>> {
    let mut parts = line.split_whitespace();
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = parts.next().is_none()
        && version.starts_with("HTTP/")
        && (1..=10).contains(&method.len())
        && method.chars().all(|c| c.is_ascii_uppercase());
    ok.then_some(Request { method, target })
}

/// `HTTP/x NNN reason`: the status.
fn status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

/// The lines of `text` as [`str::lines`] splits them, each with its byte offset.
fn lines(text: &str) -> Vec<(usize, &str)> {
    let mut at = 0;
    text.split_inclusive('\n')
        .map(|chunk| {
            let start = at;
            at += chunk.len();
            let line = match chunk.strip_suffix('\n') {
                Some(l) => l.strip_suffix('\r').unwrap_or(l),
                None => chunk,
            };
            (start, line)
        })
        .collect()
}

/// Parses `text` as `form` and returns its last response.
pub(crate) fn parse(text: &str, form: Form) -> Result<Response<'_>, Error<'_>> {
    let lines = lines(text);
    let offset = |i: usize| lines.get(i).map_or(text.len(), |(o, _)| *o);
    let transcript = form == Form::Transcript;
    let is_start = |l: &str| transcript && (request_line(l).is_some() || status_line(l).is_some());
    let mut i = 0;
    let mut request = None;
    let mut last = None;
    while let Some(&(_, line)) = lines.get(i) {
        i += 1;
        if line.trim().is_empty() {
            continue;
        }
        let req = request_line(line).filter(|_| transcript);
        let status = status_line(line).filter(|s| transcript || (100..=599).contains(s));
        if req.is_none() && status.is_none() {
            return Err(Error::StartLine {
                line: i,
                text: line,
            });
        }
        let mut headers = Vec::new();
        while let Some(&(_, h)) = lines.get(i) {
            if is_start(h) {
                break;
            }
            i += 1;
            if h.trim().is_empty() {
                break;
            }
            let (name, value) = h
                .split_once(':')
                .ok_or(Error::Header { line: i, text: h })?;
            headers.push((name.trim(), value.trim()));
        }
        let body_line = i;
        while lines.get(i).is_some_and(|&(_, b)| !is_start(b)) {
            i += 1;
        }
        let body = text.get(offset(body_line)..offset(i)).unwrap_or("");
        if req.is_some() {
            request = req;
        } else if let Some(status) = status {
            last = Some(Response {
                status,
                headers,
                body,
                body_line,
                request: request.take(),
            });
        }
    }
    last.ok_or(Error::NoResponse)
}

/// The last response of a transcript, its errors worded as [`super::NormalizeError::WrongPayload`]
/// of the normalizer that reads `expected` (the instance-metadata normalizers).
pub(crate) fn transcript<'a>(
    text: &'a str,
    expected: &'static str,
) -> Result<Response<'a>, super::NormalizeError> {
    parse(text, Form::Transcript).map_err(|e| super::NormalizeError::WrongPayload {
        expected,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn last_response_with_the_request_it_answered() {
        let t = "PUT /latest/api/token HTTP/1.1\nX-Ttl: 21600\n\nHTTP/1.1 200 OK\n\ntoken\n\nGET /latest/meta-data/spot/termination-time?x=1 HTTP/1.1\r\nHost: h\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nETag: 1\r\netag: 2\r\n\r\nline one\r\nline two\r\n";
        let r = parse(t, Form::Transcript).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(
            r.request,
            Some(Request {
                method: "GET",
                target: "/latest/meta-data/spot/termination-time?x=1"
            })
        );
        assert_eq!(
            r.target(),
            Some("/latest/meta-data/spot/termination-time?x=1")
        );
        assert_eq!(r.header("content-TYPE"), Some("text/plain"));
        assert_eq!(r.header("ETAG"), Some("1"));
        assert_eq!(r.header_values("etag").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(r.header("Missing"), None);
        assert_eq!(r.body, "line one\r\nline two\r\n");
        assert_eq!(r.text(), "line one\nline two");
        assert_eq!(r.body_line, 15);
    }

    #[test]
    fn a_response_without_a_request_has_none() {
        let t = "GET /a HTTP/1.1\n\nHTTP/1.1 200 OK\n\none\nHTTP/1.1 503 Service Unavailable\n\n";
        let r = parse(t, Form::Transcript).unwrap();
        assert_eq!((r.status, r.request, r.text().as_str()), (503, None, ""));
        // Headers end at the next exchange even without a blank line.
        let r = parse(
            "GET /b HTTP/1.1\nA: 1\nHTTP/1.1 204 No Content\nB: 2",
            Form::Transcript,
        )
        .unwrap();
        assert_eq!((r.status, r.target()), (204, Some("/b")));
        assert_eq!((r.headers, r.body, r.body_line), (vec![("B", "2")], "", 4));
    }

    #[test]
    fn any_three_digit_status_is_a_status_line() {
        let r = parse("HTTP/2 999 Odd\n\n", Form::Transcript).unwrap();
        assert_eq!(r.status, 999);
        assert!(parse("HTTP/1.1 20 OK\n\n", Form::Transcript).is_err());
        // One response must have a real status, checked before its headers.
        assert_eq!(
            parse("HTTP/2 999 Odd\nno colon\n\n", Form::Response),
            Err(Error::StartLine {
                line: 1,
                text: "HTTP/2 999 Odd"
            })
        );
        assert_eq!(
            parse("HTTP/2 599 Odd\n\n", Form::Response).map(|r| r.status),
            Ok(599)
        );
    }

    #[test]
    fn one_response_keeps_everything_after_the_headers() {
        let t = "HTTP/1.1 429 Too Many\r\nRetry-After: 5\r\n\r\n{\"a\":\r\nHTTP/1.1 200 OK\r\n1}";
        let r = parse(t, Form::Response).unwrap();
        assert_eq!((r.status, r.header("retry-after")), (429, Some("5")));
        assert_eq!(
            (r.body, r.body_line),
            ("{\"a\":\r\nHTTP/1.1 200 OK\r\n1}", 3)
        );
        // Without the blank line, a status line is just a bad header.
        assert_eq!(
            parse("HTTP/1.1 200 OK\nA: b\nHTTP/1.1 200 OK\n", Form::Response),
            Err(Error::Header {
                line: 3,
                text: "HTTP/1.1 200 OK"
            })
        );
        assert_eq!(
            parse("GET / HTTP/1.1\n\n", Form::Response),
            Err(Error::StartLine {
                line: 1,
                text: "GET / HTTP/1.1"
            })
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            parse("\nHTTP/1.1 200 OK\n\nbody\n", Form::Transcript).map(|r| r.body_line),
            Ok(3)
        );
        assert_eq!(
            parse("GET / HTTP/1.1\nHost: x\n\n", Form::Transcript),
            Err(Error::NoResponse)
        );
        assert_eq!(parse("", Form::Transcript), Err(Error::NoResponse));
        let e = parse(
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\nbody",
            Form::Transcript,
        )
        .unwrap_err();
        assert_eq!(
            e,
            Error::Header {
                line: 2,
                text: "no colon here"
            }
        );
        assert_eq!(
            e.to_string(),
            "HTTP transcript line 2: expected a header `Name: value`, found \"no colon here\""
        );
        let e = parse("\n\nhello", Form::Transcript).unwrap_err();
        assert_eq!(
            e.to_string(),
            "HTTP transcript line 3: expected a request or status line, found \"hello\""
        );
        assert_eq!(
            Error::NoResponse.to_string(),
            "an HTTP transcript without a response"
        );
    }

    #[test]
    fn transcripts_are_told_by_their_first_line() {
        assert!(is_transcript("\n  GET /x HTTP/1.1\n"));
        assert!(is_transcript("HTTP/1.1 404 Not Found\r\n\r\n"));
        assert!(!is_transcript("get /x HTTP/1.1"));
        assert!(!is_transcript("{\"HTTP/1.1 200 OK\": 1}"));
        assert!(!is_transcript(""));
    }

    #[test]
    fn line_ends_as_str_lines() {
        let t = "a\r\nb\n\nc\r";
        let ls = lines(t);
        assert_eq!(ls, [(0, "a"), (3, "b"), (5, ""), (6, "c\r")]);
        assert_eq!(
            ls.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
            t.lines().collect::<Vec<_>>()
        );
    }
}
