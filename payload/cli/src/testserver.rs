//! A tiny HTTP server for the tests: answers each connection with the next scripted answer and
//! records what was asked. Every answer closes its connection, so each request of the cli is one
//! accepted connection.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;

pub struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    pub fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            status,
            body: body.to_string(),
        }
    }
    pub fn raw(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_string(),
        }
    }
    /// Reads the request and closes the connection without a word.
    pub fn hang_up() -> Answer {
        Answer {
            status: 0,
            body: String::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    /// `POST /v1/api/QueryZone HTTP/1.1`
    pub line: String,
    pub authorization: Option<String>,
    pub body: String,
}

pub struct TestServer {
    port: u16,
    thread: JoinHandle<Vec<Request>>,
}

impl TestServer {
    pub fn start(answers: Vec<Answer>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answer in answers {
                let (stream, _) = listener.accept().unwrap();
                match serve_one(stream, &answer) {
                    Some(r) => seen.push(r),
                    // `finish` connected without a request: the cli is done.
                    None => break,
                }
            }
            seen
        });
        TestServer { port, thread }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The requests seen. Fewer requests than answers is fine (the test compares them); a
    /// request beyond the script finds no listener and fails the call.
    pub fn finish(self) -> Vec<Request> {
        // Wakes a server still waiting in accept; refused when it has answered its script.
        drop(TcpStream::connect(("127.0.0.1", self.port)));
        self.thread.join().unwrap()
    }
}

fn serve_one(stream: TcpStream, answer: &Answer) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut authorization = None;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "authorization" => authorization = Some(value.trim().to_string()),
            "content-length" => length = value.trim().parse().unwrap(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    if answer.status == 0 {
        return Some(Request {
            line: line.trim_end().to_string(),
            authorization,
            body: String::from_utf8(body).unwrap(),
        });
    }
    let reason = match answer.status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Whatever",
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.status,
        answer.body.len(),
        answer.body
    )
    .unwrap();
    stream.flush().unwrap();
    Some(Request {
        line: line.trim_end().to_string(),
        authorization,
        body: String::from_utf8(body).unwrap(),
    })
}
