//! The management node's HTTP API as the dashboard calls it: `POST /v1/api/<Name>` with a JSON
//! object and `Authorization: OAuth <session>`, exactly as zstack-cli does.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

/// An API call refused or failed: the API's own code and message (and field), or the
/// dashboard's when the API could not be reached.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl ApiFailure {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            code: code.to_string(),
            message: message.into(),
            field: None,
        }
    }

    /// The session is missing, unknown or expired: the user has to log in again.
    pub fn needs_login(&self) -> bool {
        self.code == "INVALID_SESSION"
    }
}

/// What a call answered.
pub enum Answer {
    /// A synchronous call's result.
    Done(Value),
    /// An asynchronous call's job uuid.
    Job(String),
}

pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
}

impl ApiClient {
    pub fn new(base: &str) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .timeout_read(Duration::from_secs(120))
                .build(),
        }
    }

    /// Calls `name` with `params` (blocking: run it on the blocking pool).
    pub fn call(
        &self,
        session: Option<&str>,
        name: &str,
        params: &Value,
    ) -> Result<Answer, ApiFailure> {
        let mut req = self.agent.post(&format!("{}/v1/api/{name}", self.base));
        if let Some(s) = session {
            req = req.set("Authorization", &format!("OAuth {s}"));
        }
        let (status, body) = answer(req.send_json(params))?;
        if status == 202 {
            let uuid = body["jobUuid"].as_str().ok_or_else(|| {
                ApiFailure::new(
                    502,
                    "BAD_ANSWER",
                    format!("{name} answered 202 without a job"),
                )
            })?;
            return Ok(Answer::Job(uuid.to_string()));
        }
        Ok(Answer::Done(body))
    }

    /// A synchronous call's result (a job's uuid is refused: use [`ApiClient::call`]).
    pub fn sync(&self, session: &str, name: &str, params: &Value) -> Result<Value, ApiFailure> {
        match self.call(Some(session), name, params)? {
            Answer::Done(v) => Ok(v),
            Answer::Job(_) => Err(ApiFailure::new(
                502,
                "BAD_ANSWER",
                format!("{name} answered with a job where a result was expected"),
            )),
        }
    }

    /// The job `uuid` now, or as soon as it ends within `wait` seconds.
    pub fn job(&self, session: &str, uuid: &str, wait: u64) -> Result<Value, ApiFailure> {
        let req = self
            .agent
            .get(&format!("{}/v1/api-jobs/{uuid}", self.base))
            .query("wait", &wait.to_string())
            .set("Authorization", &format!("OAuth {session}"));
        let (_, body) = answer(req.call())?;
        Ok(body["job"].clone())
    }

    /// The API reference (`GET /v1/apis`): every call with its parameters.
    pub fn reference(&self) -> Result<Value, ApiFailure> {
        let (_, body) = answer(self.agent.get(&format!("{}/v1/apis", self.base)).call())?;
        Ok(body["apis"].clone())
    }
}

/// The status and JSON body of an answer; an error body becomes its [`ApiFailure`].
fn answer(r: Result<ureq::Response, ureq::Error>) -> Result<(u16, Value), ApiFailure> {
    match r {
        Ok(resp) => {
            let status = resp.status();
            let body: Value = resp.into_json().map_err(|e| {
                ApiFailure::new(
                    502,
                    "BAD_ANSWER",
                    format!("the API's answer is not JSON: {e}"),
                )
            })?;
            Ok((status, body))
        }
        Err(ureq::Error::Status(status, resp)) => {
            let body: Value = resp.into_json().unwrap_or_else(|_| json!({}));
            let e = &body["error"];
            Err(ApiFailure {
                status,
                code: e["code"].as_str().unwrap_or("API_ERROR").to_string(),
                message: e["message"]
                    .as_str()
                    .unwrap_or("the API refused the call without saying why")
                    .to_string(),
                field: e["field"].as_str().map(str::to_string),
            })
        }
        Err(e) => Err(ApiFailure::new(
            503,
            "API_UNREACHABLE",
            format!("the management node's API cannot be reached: {e}"),
        )),
    }
}
