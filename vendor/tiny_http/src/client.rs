use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::{Shutdown, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
use crate::connection::Connection;
use crate::limits::{Linger, ReadDeadline};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // aistudioproxy patch: the connection's limits and state.
    policy: ConnPolicy,
    /// The reading half's deadline, set while a head is read.
    deadline: Arc<ReadDeadline>,
    /// The plain socket, shared with the halves (none over TLS).
    socket: Option<Connection>,
    /// Set when a request's body was refused: close, lingering.
    refused: Arc<AtomicBool>,
    /// Requests read so far.
    served: u64,
    /// For a later head: its deadline starts at its first byte.
    await_first_byte: bool,
}

/// aistudioproxy patch: how one connection is bounded (see `crate::limits`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnPolicy {
    pub accepted: Instant,
    pub header_timeout: Option<Duration>,
    pub keepalive_timeout: Option<Duration>,
    pub linger: Linger,
    /// Admitted into the probe reserve: one request only.
    pub reserve: bool,
}

impl Default for ConnPolicy {
    fn default() -> Self {
        ConnPolicy {
            accepted: Instant::now(),
            header_timeout: None,
            keepalive_timeout: None,
            linger: Linger::default(),
            reserve: false,
        }
    }
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    /// aistudioproxy patch: a header line or the header block is too large
    HeadersTooLarge,
    /// aistudioproxy patch: the body's length is ambiguous (RFC 9112 6.3)
    BadFraming(&'static str),
    ReadIoError(IoError),
}

/// aistudioproxy patch: the longest request or header line accepted.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// aistudioproxy patch: the largest number of header lines accepted.
const MAX_HEADER_LINES: usize = 128;

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
    ) -> ClientConnection {
        Self::with_policy(write_socket, read_socket, ConnPolicy::default())
    }

    /// aistudioproxy patch: a connection bounded by `policy`.
    pub(crate) fn with_policy(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        policy: ConnPolicy,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let deadline = read_socket.deadline();
        let socket = read_socket.socket();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            policy,
            deadline,
            socket,
            refused: Arc::new(AtomicBool::new(false)),
            served: 0,
            await_first_byte: false,
        }
    }

    /// aistudioproxy patch: wait until the previous request is over, its
    /// answer written out and its body reader handed back, so that the
    /// keep-alive timer starts at the end of the answer (not while a long
    /// answer is still streaming) and a refusal is seen before reading on.
    /// Pipelined requests are thereby read one after another.
    fn wait_previous(&mut self) {
        if self.served == 0 {
            return;
        }
        {
            // Its turn comes once the previous writer is dropped.
            let mut writer = self.sink.next().unwrap();
            writer.flush().ok();
        }
        self.next_header_source.wait_turn();
    }

    /// aistudioproxy patch: the deadline for the first byte of the next head.
    fn arm_head_deadline(&mut self) {
        let p = self.policy;
        let at = if self.served == 0 {
            p.header_timeout.map(|t| p.accepted + t)
        } else {
            self.await_first_byte = true;
            p.keepalive_timeout.map(|t| Instant::now() + t)
        };
        self.deadline.set(at);
    }

    /// aistudioproxy patch: a bounded lingering close (see [`Linger`]):
    /// the answer is out, so shut our sending side (the client reads the
    /// answer to its end), then read and discard what it still sends.
    fn linger(&mut self) {
        if let Some(socket) = &self.socket {
            socket.shutdown(Shutdown::Write).ok();
        }
        let l = self.policy.linger;
        let end = Instant::now() + l.max_time;
        let mut sink = [0u8; 16 * 1024];
        let mut drained = 0u64;
        // Each pass reads at least one byte or ends; the deadline bounds time.
        while drained < l.max_bytes {
            let now = Instant::now();
            if now >= end {
                break;
            }
            self.deadline.set(Some((now + l.max_silence).min(end)));
            match self.next_header_source.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n as u64,
            }
        }
        self.deadline.set(None);
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    fn read_next_line(&mut self) -> IoResult<AsciiString> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b?,
                None => return Err(IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF")),
            };

            // aistudioproxy patch: a later head must be whole within the
            // header timeout of its first byte.
            if self.await_first_byte {
                self.await_first_byte = false;
                let now = Instant::now();
                self.deadline
                    .set(self.policy.header_timeout.map(|t| now + t));
            }

            if buf.len() >= MAX_LINE_BYTES {
                return Err(IoError::new(ErrorKind::InvalidData, "line too long"));
            }

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf)
                    .map_err(|_| IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII"));
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self.read_next_line().map_err(too_large_or_io)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self.read_next_line().map_err(too_large_or_io)?;
                    if headers.len() >= MAX_HEADER_LINES {
                        return Err(ReadError::HeadersTooLarge);
                    }

                    if line.is_empty() {
                        break;
                    };
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // aistudioproxy patch: the head is whole; the body is read under the
        // I/O timeout.
        self.deadline.set(None);
        self.served += 1;

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            Some(self.refused.clone()),
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
                request::RequestCreationError::BadFraming(why) => ReadError::BadFraming(why),
            }
        })?;

        let mut request = request;
        request.set_link(
            self.socket.as_ref().and_then(|s| s.try_clone().ok()),
            self.policy.reserve,
        );

        // return the request
        Ok(request)
    }
}

/// aistudioproxy patch: errors found while reading a request's head are
/// answered in the OpenAI error format the coordinator uses everywhere, with
/// `Connection: close` (written by hand: tiny_http drops that header from a
/// `Response`), since the connection cannot carry another request.
fn write_error(w: &mut impl Write, status: &str, code: &str, message: &str) {
    let body = format!(
        "{{\"error\":{{\"message\":\"{message}\",\"type\":\"invalid_request_error\",\"code\":\"{code}\",\"param\":null}}}}"
    );
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).ok();
    w.write_all(body.as_bytes()).ok();
    w.flush().ok();
}

fn too_large_or_io(e: IoError) -> ReadError {
    if e.kind() == ErrorKind::InvalidData {
        ReadError::HeadersTooLarge
    } else {
        ReadError::ReadIoError(e)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            // aistudioproxy patch: the last request (the client sent
            // `Connection: close`, or HTTP/1.0) may have been refused too.
            self.wait_previous();
            if self.refused.load(Ordering::SeqCst) {
                self.linger();
            }
            return None;
        }

        loop {
            // aistudioproxy patch: a refused body ends the connection, with
            // a lingering close; otherwise the next head has its deadline.
            self.wait_previous();
            if self.refused.load(Ordering::SeqCst) {
                self.linger();
                return None;
            }
            self.arm_head_deadline();

            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) | Err(ReadError::WrongHeader(_)) => {
                    {
                        let mut writer = self.sink.next().unwrap();
                        write_error(&mut writer, "400 Bad Request", "bad_request", "malformed HTTP request line or header");
                    }
                    // aistudioproxy patch: the rest may still be coming.
                    self.linger();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                // aistudioproxy patch: where the body ends is unclear, so
                // nothing after the head can be read as a request.
                Err(ReadError::BadFraming(why)) => {
                    {
                        let mut writer = self.sink.next().unwrap();
                        write_error(&mut writer, "400 Bad Request", "bad_request", why);
                    }
                    self.linger();
                    return None;
                }

                Err(ReadError::HeadersTooLarge) => {
                    {
                        let mut writer = self.sink.next().unwrap();
                        write_error(
                            &mut writer,
                            "431 Request Header Fields Too Large",
                            "headers_too_large",
                            "a request header line is over 16 KiB or there are more than 128",
                        );
                    }
                    // Closing with unread input makes the kernel send a
                    // reset, which can destroy the 431 before the client
                    // reads it: a lingering close swallows the rest first.
                    self.linger();
                    return None; // the rest of the request cannot be trusted: close
                }

                // aistudioproxy patch: a head that did not come in time
                // (or a keep-alive connection idle too long) is closed
                // without an answer, as nginx does. Upstream answered 408
                // (to TimedOut only, while a socket timeout is WouldBlock),
                // which could follow a streamed answer unasked.

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // aistudioproxy patch: a connection in the reserve carries one request.
            if self.policy.reserve {
                self.no_more_requests = true;
            }

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
