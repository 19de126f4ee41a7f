//! Headless Chromium driven over W3C WebDriver (Debian's `chromedriver`), for the dashboard's
//! tests. The protocol is JSON over HTTP, so this is a thin layer over ureq: the browser is
//! started with a fresh profile, and dropping [`Browser`] saves a screenshot of the last page
//! (also when the test failed), ends the session and stops chromedriver.
#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    base: String,
    session: String,
    agent: ureq::Agent,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where the last page's screenshot goes.
    pub screenshot: PathBuf,
}

/// The directory for a test's files (screenshots): `<base>/<test>/`, emptied first; `base` is
/// the test's `env!("CARGO_TARGET_TMPDIR")` (`target/tmp`).
pub fn output_dir(base: &str, test: &str) -> PathBuf {
    let dir = Path::new(base).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub fn start(screenshot: PathBuf) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) must be installed");
        let base = format!("http://127.0.0.1:{port}");
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = agent
                .get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1366,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            "unhandledPromptBehavior": "ignore",
        }}});
        let mut b = Browser {
            base,
            session: String::new(),
            agent,
            driver,
            _profile: profile,
            screenshot,
        };
        let v = b.raw("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().unwrap().to_string();
        b
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_raw(method, path, body) {
            Ok(v) => v,
            Err((code, v)) => panic!("WebDriver {method} {path}: {code} {v}"),
        }
    }

    /// One WebDriver call; a refusal comes back as its HTTP status and the protocol's error value.
    fn try_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (u16, Value)> {
        let url = format!("{}{path}", self.base);
        let req = self.agent.request(method, &url);
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r.into_json::<Value>().unwrap()["value"].clone()),
            Err(ureq::Error::Status(code, r)) => {
                let v: Value = r.into_json().unwrap_or_default();
                Err((code, v["value"].clone()))
            }
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap().to_string()
    }

    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs `script` in the page and returns what it returns.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Runs an async `script`; it calls `arguments[arguments.length - 1]` with its result.
    pub fn js_async(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Every element matching `css` now.
    pub fn all(&self, css: &str) -> Vec<Element<'_>> {
        self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Element {
            b: self,
            id: e[ELEMENT].as_str().unwrap().to_string(),
        })
        .collect()
    }

    /// The first element matching `css`, waiting up to 30 s for it.
    pub fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.all(css).into_iter().next() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on {}:\n{}",
                self.url(),
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits up to `secs` for `done`.
    pub fn wait_for(&self, what: &str, secs: u64, mut done: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not so after {secs} s on {}:\n{}",
                self.url(),
                self.source()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Types `text` into the field `css` (emptied first).
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        e.clear();
        e.keys(text);
    }

    /// Chooses the option of value `value` in the select `css`.
    pub fn choose(&self, css: &str, value: &str) {
        self.find(css);
        let opt = self.find(&format!("{css} option[value=\"{value}\"]"));
        if opt.prop("selected") != json!(true) {
            opt.click();
        }
    }

    pub fn click(&self, css: &str) {
        self.find(css).click();
    }

    pub fn text(&self, css: &str) -> String {
        self.find(css).text()
    }

    /// The value of the cookie `name` (HttpOnly ones too).
    pub fn cookie(&self, name: &str) -> String {
        self.cmd("GET", &format!("/cookie/{name}"), None)["value"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// The page as PNG.
    pub fn screenshot_png(&self) -> Vec<u8> {
        let b64 = self.cmd("GET", "/screenshot", None);
        base64_decode(b64.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // The last page, to look at when the test failed.
            let shot =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.screenshot_png()));
            if let Ok(png) = shot {
                if std::fs::write(&self.screenshot, png).is_ok() {
                    eprintln!("screenshot of the last page: {}", self.screenshot.display());
                }
            }
            let _ = self
                .agent
                .delete(&format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

pub struct Element<'a> {
    b: &'a Browser,
    id: String,
}

impl Element<'_> {
    fn path(&self, tail: &str) -> String {
        format!("/element/{}{tail}", self.id)
    }

    pub fn click(&self) {
        self.b.cmd("POST", &self.path("/click"), Some(json!({})));
    }

    pub fn clear(&self) {
        self.b.cmd("POST", &self.path("/clear"), Some(json!({})));
    }

    /// Types `text` (WebDriver key codes such as `\u{E007}` for Enter included).
    pub fn keys(&self, text: &str) {
        self.b
            .cmd("POST", &self.path("/value"), Some(json!({"text": text})));
    }

    /// The element's text; empty if the page replaced it meanwhile (the WebDriver error code
    /// "stale element reference"), so a wait on a page that updates itself simply tries again.
    pub fn text(&self) -> String {
        let path = format!("/session/{}{}", self.b.session, self.path("/text"));
        match self.b.try_raw("GET", &path, None) {
            Ok(v) => v.as_str().unwrap_or_default().to_string(),
            Err((_, v)) if v["error"] == "stale element reference" => String::new(),
            Err((code, v)) => panic!("WebDriver GET {path}: {code} {v}"),
        }
    }

    pub fn prop(&self, name: &str) -> Value {
        self.b
            .cmd("GET", &self.path(&format!("/property/{name}")), None)
    }
}

/// Standard base64, as WebDriver sends screenshots.
fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGk="), b"hi");
    }
}
