//! Asynchronous API calls. A call that drives hosts or copies data is checked and its resources
//! are reserved synchronously (so a bad argument is refused at once, with its field), then the
//! slow part runs as a job: the caller gets `202 {"jobUuid", "location"}` and reads the outcome
//! with `GET /v1/api-jobs/<uuid>?wait=<seconds>`, which answers as soon as the job ends.
//!
//! Every job is a row of the `job` table. A job still `Running` when the management node starts
//! again was cut off by a restart: it is marked `Failed` with that reason, never dropped, and the
//! resources it touched are re-read from their hosts when the hosts reconnect.

use std::collections::HashMap;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::Node;

pub type JobRun = Box<dyn FnOnce(&Node, &Steps) -> Result<Value, ApiError> + Send>;

/// The slow part of an asynchronous call.
pub struct Job {
    /// The resource the job is about, for the record.
    pub resource_uuid: Option<String>,
    pub run: JobRun,
}

impl Job {
    pub fn new(
        resource_uuid: Option<String>,
        run: impl FnOnce(&Node) -> Result<Value, ApiError> + Send + 'static,
    ) -> Job {
        Job {
            resource_uuid,
            run: Box::new(move |node, _| run(node)),
        }
    }

    /// A job that reports named steps as it goes ([`Steps::record`]).
    pub fn with_steps(
        resource_uuid: Option<String>,
        run: impl FnOnce(&Node, &Steps) -> Result<Value, ApiError> + Send + 'static,
    ) -> Job {
        Job {
            resource_uuid,
            run: Box::new(run),
        }
    }
}

/// Where a step of a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StepState {
    Running,
    Succeeded,
    Failed,
}

/// One step of a job, as `QueryJob` and the job's result show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub name: String,
    pub state: StepState,
    /// For a step that ended: whether it changed the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    pub message: String,
    pub time: String,
}

/// The steps of one running job, written to its row (`job.steps`) as they happen.
pub struct Steps {
    job_uuid: Option<String>,
    list: Mutex<Vec<Step>>,
}

impl Steps {
    pub fn new(job_uuid: Option<String>) -> Steps {
        Steps {
            job_uuid,
            list: Mutex::new(Vec::new()),
        }
    }

    /// Records step `name` (replacing what was said about it before) and writes the job's steps.
    /// A step the record cannot be written for is logged, never a reason to fail the job.
    pub fn record(
        &self,
        node: &Node,
        name: &str,
        state: StepState,
        changed: Option<bool>,
        message: &str,
    ) {
        let text = {
            let Ok(mut list) = self.list.lock() else {
                return;
            };
            let step = Step {
                name: name.to_string(),
                state,
                changed,
                message: message.to_string(),
                time: crate::auth::now(),
            };
            match list.iter_mut().find(|s| s.name == name) {
                Some(s) => *s = step,
                None => list.push(step),
            }
            serde_json::to_string(&*list).unwrap_or_else(|_| "[]".into())
        };
        let Some(uuid) = &self.job_uuid else { return };
        let written = node.db().and_then(|c| {
            c.execute(
                "UPDATE job SET steps = ?2, last_op_date = ?3 WHERE uuid = ?1",
                params![uuid, text, crate::auth::now()],
            )
            .map_err(ApiError::from)
        });
        match written {
            Ok(_) => node.jobs.notify(uuid),
            Err(e) => node.log.warn(&format!(
                "job {uuid}: cannot record step {name}: {}",
                e.message
            )),
        }
    }

    /// The steps so far.
    pub fn list(&self) -> Vec<Step> {
        self.list.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

pub const INTERRUPTED: &str = "MANAGEMENT_NODE_RESTARTED";

/// The jobs this process runs, for the callers waiting on them.
#[derive(Default)]
pub struct JobBoard {
    running: Mutex<HashMap<String, watch::Sender<()>>>,
}

impl JobBoard {
    /// Records a new running job; returns its uuid.
    pub fn create(
        &self,
        conn: &Connection,
        api_name: &str,
        resource_uuid: Option<&str>,
    ) -> Result<String, ApiError> {
        let uuid = crate::new_uuid();
        let ts = crate::auth::now();
        conn.execute(
            "INSERT INTO job (uuid, api_name, state, resource_uuid, create_date, last_op_date)
             VALUES (?1, ?2, 'Running', ?3, ?4, ?4)",
            params![uuid, api_name, resource_uuid, ts],
        )?;
        let (tx, _) = watch::channel(());
        self.running
            .lock()
            .map_err(|_| ApiError::internal("the job board lock is poisoned"))?
            .insert(uuid.clone(), tx);
        Ok(uuid)
    }

    /// Records the outcome, then wakes whoever waits on the job.
    pub fn finish(
        &self,
        conn: &Connection,
        uuid: &str,
        outcome: &Result<Value, ApiError>,
    ) -> Result<(), ApiError> {
        let (state, result, error) = match outcome {
            Ok(v) => ("Succeeded", Some(v.to_string()), None),
            Err(e) => ("Failed", None, Some(e.to_json().to_string())),
        };
        conn.execute(
            "UPDATE job SET state = ?2, result = ?3, error = ?4, last_op_date = ?5 WHERE uuid = ?1",
            params![uuid, state, result, error, crate::auth::now()],
        )?;
        // Dropping the sender wakes every receiver.
        if let Ok(mut running) = self.running.lock() {
            running.remove(uuid);
        }
        Ok(())
    }

    /// Wakes whoever waits on a running job (a step of it was recorded).
    pub fn notify(&self, uuid: &str) {
        if let Ok(running) = self.running.lock() {
            if let Some(tx) = running.get(uuid) {
                tx.send_replace(());
            }
        }
    }

    /// A receiver that wakes when the job ends or records a step; `None` when this process does not run it.
    pub fn subscribe(&self, uuid: &str) -> Option<watch::Receiver<()>> {
        self.running
            .lock()
            .ok()
            .and_then(|r| r.get(uuid).map(watch::Sender::subscribe))
    }
}

/// The job as the API shows it.
pub fn read(conn: &Connection, uuid: &str) -> Result<Value, ApiError> {
    let row = conn
        .query_row(
            "SELECT uuid, api_name, state, resource_uuid, result, error, create_date, last_op_date,
                    steps
               FROM job WHERE uuid = ?1",
            [uuid],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("job", uuid))?;
    let parse = |s: Option<String>| {
        s.and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .unwrap_or(Value::Null)
    };
    Ok(json!({
        "uuid": row.0,
        "apiName": row.1,
        "state": row.2,
        "resourceUuid": row.3,
        "result": parse(row.4),
        "error": parse(row.5),
        "createDate": row.6,
        "lastOpDate": row.7,
        "steps": match parse(row.8) {
            Value::Null => json!([]),
            steps => steps,
        },
    }))
}

/// Marks the jobs a previous run of the management node left running as failed; returns how many.
pub fn fail_interrupted(conn: &Connection) -> Result<usize, ApiError> {
    let error = json!({
        "code": INTERRUPTED,
        "message": "the management node restarted while this job was running; the job did not \
                    finish. The resources it touched were re-read from their hosts: query them \
                    and retry the call if needed",
    });
    Ok(conn.execute(
        "UPDATE job SET state = 'Failed', error = ?1, last_op_date = ?2 WHERE state = 'Running'",
        params![error.to_string(), crate::auth::now()],
    )?)
}

/// Forgets finished jobs older than `days`.
pub fn prune(conn: &Connection, days: i64) -> Result<usize, ApiError> {
    let cutoff = (chrono::Utc::now() - chrono::Duration::days(days))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    Ok(conn.execute(
        "DELETE FROM job WHERE state <> 'Running' AND last_op_date < ?1",
        [cutoff],
    )?)
}
