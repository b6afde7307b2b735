//! `GET /runs/stream`: run, step and approval events as Server-Sent Events, or as WebSocket text
//! messages (one ledger entry JSON each) when the request asks to upgrade. Every event carries its
//! ledger sequence as its id; a reconnect with `Last-Event-ID` (or `?after=`) first replays the
//! ledger after that sequence, then follows live, with nothing missed and nothing twice. A
//! consumer that falls further behind than the event buffer gets a `lagged` event naming the
//! sequence to resume from, and is disconnected. Filters: `run`, `dag`, `tenant`. Event names
//! are the entries' kinds, or with `names=orchestration` (the default on the runbook's path
//! `/api/orchestrations/stream`) the runbook's `orchestration.step.succeeded`.

use crate::api::extract::{Auth, QueryArgs};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::{Principal, Scope};
use crate::domain::approvals::ApprovalEvent;
use crate::domain::runs::RunEvent;
use crate::kernel::event::Event as _;
use crate::kernel::ledger::Entry;
use crate::machine::read;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// Events buffered for one consumer between the producer and the connection.
const STREAM_BUFFER: usize = 1_024;
/// Ledger entries read per replay page.
const REPLAY_PAGE: usize = 1_000;
/// A consumer that takes longer than this to accept one event is disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive comments on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    run: Option<String>,
    dag: Option<String>,
    tenant: Option<String>,
    after: Option<u64>,
    /// Event names: `ledger` (the entry's kind, `step.succeeded`) or `orchestration` (the
    /// runbook's, `orchestration.step.succeeded`). Default: `ledger`, but `orchestration` on
    /// the runbook's path `/api/orchestrations/stream`.
    names: Option<String>,
}

struct Filter {
    q: StreamQuery,
    /// Event names prefixed with `orchestration.`.
    prefixed: bool,
    principal: Principal,
    dag_of: HashMap<String, String>,
}

impl Filter {
    fn keep(&mut self, state: &AppState, e: &Entry) -> bool {
        let run_entry = RunEvent::is_kind(&e.kind) || ApprovalEvent::is_kind(&e.kind);
        if !run_entry || !self.principal.sees(&e.tenant) {
            return false;
        }
        if self.q.tenant.as_ref().is_some_and(|t| *t != e.tenant) {
            return false;
        }
        let run = e.subjects.first().cloned().unwrap_or_default();
        if self.q.run.as_ref().is_some_and(|r| *r != run) {
            return false;
        }
        if let Some(dag) = &self.q.dag {
            if !self.dag_of.contains_key(&run) {
                let found = state
                    .store
                    .read()
                    .ok()
                    .and_then(|t| read::run(&t, &run).ok().flatten())
                    .map(|r| r.dag)
                    .unwrap_or_default();
                self.dag_of.insert(run.clone(), found);
            }
            return self.dag_of.get(&run) == Some(dag);
        }
        true
    }
}

/// One event for either transport.
struct Item {
    id: Option<u64>,
    kind: String,
    data: String,
}

fn item(e: &Entry, prefixed: bool) -> Item {
    let kind = if prefixed { format!("orchestration.{}", e.kind) } else { e.kind.clone() };
    Item { id: Some(e.seq), kind, data: String::from_utf8_lossy(&e.to_json()).into_owned() }
}

fn sse(i: Item) -> Event {
    let ev = Event::default().event(i.kind).data(i.data);
    match i.id {
        Some(id) => ev.id(id.to_string()),
        None => ev,
    }
}

pub async fn stream(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    headers: HeaderMap,
    QueryArgs(q): QueryArgs<StreamQuery>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let principal = auth.require(Scope::Read)?.clone();
    let prefixed = match q.names.as_deref() {
        None => req.uri().path().starts_with(crate::api::RUNBOOK_PREFIX),
        Some("ledger") => false,
        Some("orchestration") => true,
        Some(other) => {
            return Err(Problem::invalid("names", format!("names={other:?}: expected ledger or orchestration")));
        }
    };
    // Following a run or DAG that does not exist would wait forever: say so at once.
    {
        let txn = state.store.read()?;
        if let Some(run) = &q.run
            && read::run(&txn, run)?.filter(|r| principal.sees(&r.tenant)).is_none()
        {
            return Err(Problem::not_found(format!("run {run}")));
        }
        if let Some(dag) = &q.dag
            && !read::dags(&txn)?.iter().any(|d| d.name == *dag)
        {
            return Err(Problem::not_found(format!("DAG {dag}")));
        }
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.after);
    // Subscribe before reading the head, so nothing committed in between is missed.
    let live = state.writer.subscribe();
    let after = last.unwrap_or_else(|| state.writer.stats().head_seq());
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let filter = Filter { q, prefixed, principal, dag_of: HashMap::new() };
    let upgrade = headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    tokio::spawn(produce(state, live, after, filter, tx));
    if upgrade {
        return websocket(req, rx).await;
    }
    drop(req);
    let events =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|i| (Ok::<_, Infallible>(sse(i)), rx)) },
        );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}

/// The same events as WebSocket text messages: each a ledger entry's JSON; a lagging consumer
/// gets `{"kind":"lagged","data":{"resumeFrom":N}}` and a close.
async fn websocket(req: axum::extract::Request, mut rx: mpsc::Receiver<Item>) -> ApiResult<Response> {
    use axum::extract::FromRequestParts;
    use axum::extract::ws::{Message, WebSocketUpgrade};
    let (mut parts, _) = req.into_parts();
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| crate::api::problem::Problem::new(e.status(), "bad_upgrade", e.body_text()))?;
    Ok(ws.on_upgrade(move |mut socket| async move {
        while let Some(i) = rx.recv().await {
            let text = if i.kind == "lagged" { format!("{{\"kind\":\"lagged\",\"data\":{}}}", i.data) } else { i.data };
            if socket.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
        let _ = socket.send(Message::Close(None)).await;
    }))
}

async fn send(tx: &mpsc::Sender<Item>, ev: Item) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, tx.send(ev)).await, Ok(Ok(())))
}

async fn produce(
    state: Arc<AppState>,
    mut live: tokio::sync::broadcast::Receiver<Arc<Entry>>,
    mut after: u64,
    mut filter: Filter,
    tx: mpsc::Sender<Item>,
) {
    loop {
        let Ok(page) = state.store.read().and_then(|t| read::ledger_after(&t, after, REPLAY_PAGE)) else { return };
        for e in &page {
            after = e.seq;
            if filter.keep(&state, e) && !send(&tx, item(e, filter.prefixed)).await {
                return;
            }
        }
        if page.len() < REPLAY_PAGE {
            break;
        }
    }
    loop {
        match live.recv().await {
            Ok(e) if e.seq <= after => continue,
            Ok(e) => {
                after = e.seq;
                if filter.keep(&state, &e) && !send(&tx, item(&e, filter.prefixed)).await {
                    return;
                }
            }
            Err(RecvError::Lagged(_)) => {
                let lagged = Item { id: None, kind: "lagged".into(), data: format!("{{\"resumeFrom\":{after}}}") };
                let _ = send(&tx, lagged).await;
                return;
            }
            Err(RecvError::Closed) => return,
        }
    }
}
