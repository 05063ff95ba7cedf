//! A W3C WebDriver client for headless Chromium: starts `chromedriver` on a free port,
//! opens a session, and speaks the protocol's JSON over HTTP. Chromium and chromedriver
//! are Debian's `chromium` and `chromium-driver`; without them the test fails saying so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::http;

/// The W3C identifier of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser window under test.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    /// A private profile, removed afterwards.
    profile: tempfile::TempDir,
}

/// A binary on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let install = "apt-get install chromium chromium-driver";
        let chromium = which("chromium")
            .or_else(|| which("chromium-browser"))
            .unwrap_or_else(|| panic!("chromium is not installed: {install}"));
        let chromedriver = which("chromedriver")
            .unwrap_or_else(|| panic!("chromedriver is not installed: {install}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} ({install})", chromedriver.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
                drop(stream);
                let status = http::request(addr, "GET", "/status", &[], None).await;
                if status.status == 200 && status.json()["value"]["ready"] == json!(true) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            profile,
        };
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    format!("--user-data-dir={}", browser.profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let session = browser.post("/session", capabilities).await;
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {session}"))
            .to_owned();
        browser
    }

    /// One command; a WebDriver error comes back as its JSON `value`.
    async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let body = body.map(|b| b.to_string());
        // Boxed: the test's future stays small however many steps it awaits.
        let answer = Box::pin(http::request(self.addr, method, path, &[], body.as_deref())).await;
        let json = answer.json();
        match answer.status {
            200 => Ok(json["value"].clone()),
            _ => Err(json["value"].clone()),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {method} {path} failed: {error}"))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call("POST", path, Some(body)).await
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.post(&self.at("/url"), json!({ "url": url })).await;
    }

    /// Resizes the window, e.g. to a tablet's.
    pub async fn resize(&self, width: u32, height: u32) {
        self.post(
            &self.at("/window/rect"),
            json!({ "width": width, "height": height }),
        )
        .await;
    }

    /// Runs `script` in the page (its `arguments` are `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post(
            &self.at("/execute/sync"),
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Runs `script`, which calls `arguments[arguments.length - 1]` with its result.
    pub async fn execute_async(&self, script: &str, args: Value) -> Value {
        self.post(
            &self.at("/execute/async"),
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// The element `css` selects, if any.
    pub async fn try_find(&self, css: &str) -> Option<String> {
        let found = self
            .post(
                &self.at("/elements"),
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found
            .as_array()
            .and_then(|all| all.first())
            .and_then(|e| e[ELEMENT].as_str())
            .map(str::to_owned)
    }

    /// Waits (15 s at most) for the element `css` selects.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(element) = self.try_find(css).await {
                return element;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on the page; it shows: {}",
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `css` selects (found again if the page redrew it meanwhile).
    pub async fn click(&self, css: &str) {
        for _ in 0..20 {
            let element = self.find(css).await;
            let clicked = self
                .try_call(
                    "POST",
                    &self.at(&format!("/element/{element}/click")),
                    Some(json!({})),
                )
                .await;
            match clicked {
                Ok(_) => return,
                Err(error) if error["error"] == "stale element reference" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("clicking {css} failed: {error}"),
            }
        }
        panic!("{css} kept being redrawn; it could not be clicked");
    }

    /// Types `text` into the field `css` selects, after emptying it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&self.at(&format!("/element/{element}/clear")), json!({}))
            .await;
        self.post(
            &self.at(&format!("/element/{element}/value")),
            json!({ "text": text }),
        )
        .await;
    }

    /// Chooses the option with `value` in the select `css` selects, as a keyboard user
    /// would (it fires `change`).
    pub async fn choose(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"))
            .await;
    }

    /// The visible text of the element `css` selects, if there is one (read in one step
    /// in the page, so a redraw cannot make it stale).
    pub async fn try_text(&self, css: &str) -> Option<String> {
        self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            json!([css]),
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// The whole page's visible text.
    pub async fn page_text(&self) -> String {
        self.try_text("body").await.unwrap_or_default()
    }

    /// Waits (20 s at most) until the text of `css` satisfies `pred`; returns it.
    pub async fn wait_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.try_text(css).await.unwrap_or_default();
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {css} shows {text:?}; the page shows: {}",
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves the window as `services/console/screenshots/<name>.png` when
    /// `RATEMESH_CONSOLE_SCREENSHOTS=1`.
    pub async fn screenshot(&self, name: &str) {
        if std::env::var("RATEMESH_CONSOLE_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        self.execute(
            "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);",
            json!([]),
        )
        .await;
        let png = self.call("GET", &self.at("/screenshot"), None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("screenshots");
        std::fs::create_dir_all(&dir).expect("screenshots dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http::request_blocking(self.addr, "DELETE", &self.at(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
