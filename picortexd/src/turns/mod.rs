//! The per-chat turn queue and its runner (SPEC §2 steps 5–8, T1, T4, T5). Turns wait in SQLite
//! (`turns.status = 'queued'`); the dispatcher starts the oldest queued turn of each idle chat, up
//! to `turns.max_concurrent` at once, so one chat's turns never overlap and chats run in parallel.
//!
//! A turn's life: provision the chat if needed → write the request into a sealed memfd and create
//! the result file → `StartTurn` through the helper → watch the unit → read the result file and the
//! unit's `Result` → record the outcome and the reply parts in one transaction → release the unit.
//! Each step is recorded before the next, so after a crash `recover` resumes every turn from where
//! it was: a turn whose unit is still known to systemd is watched again; one whose unit is gone
//! ends honestly as interrupted.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picortex_proto::bus::limits as L;
use picortex_proto::ids::TurnId;
use picortex_proto::turn::{self as proto_turn, Outcome, TurnRequest, TurnResult};
use tokio::sync::{mpsc, Notify};

use crate::attention::{discriminator, Mode};
use crate::bus::{Bus, BusError, Started, UnitEnd};
use crate::config::Config;
use crate::context;
use crate::linq::clean;
use crate::linq::client::LinqClient;
use crate::linq::split::split_reply;
use crate::outcome::TurnOutcome as O;
use crate::owner::Owner;
use crate::reply;
use crate::spares::{Spare, Spares};
use crate::store::authority;
use crate::store::queries::{self, Finished, TurnJob, TurnKind};
use crate::store::Store;

mod again;
mod results;
use results::ResultFiles;

/// Spare units being started at once (see `Turns::spare_loop`).
const SPARE_STARTS_AT_ONCE: usize = 2;
/// How long a spare's start waits for chats' first turns being started, at most.
const SPARE_YIELD_MAX: Duration = Duration::from_secs(2);
/// How long no turn must have been starting before a spare's start goes ahead: a spare is
/// asked for when its chat's turn ends, which is when the next message (to another chat,
/// which may have no spare) tends to arrive.
const SPARE_SETTLE: Duration = Duration::from_millis(30);
/// How long after its StartTurn a fresh unit still counts as being started (systemd builds
/// its sandbox after the call returns: ~70 ms, more under load), unless it answers first.
const COLD_SETUP_GRACE: Duration = Duration::from_millis(250);

pub struct Turns {
    pub store: Store,
    pub bus: Arc<Bus>,
    pub linq: Arc<LinqClient>,
    /// The configuration of the moment (`systemctl reload` swaps it).
    pub cfg: crate::config::Live,
    results: ResultFiles,
    pub wake: Arc<Notify>,
    pub outbox_wake: Arc<Notify>,
    /// Chats with a turn in flight in this process.
    busy: Mutex<HashSet<String>>,
    /// Units started ahead of each chat's next turn (see `spares`).
    spares: Spares,
    spare_tx: mpsc::UnboundedSender<crate::spares::Ask>,
    spare_rx: Mutex<Option<mpsc::UnboundedReceiver<crate::spares::Ask>>>,
    /// Whose words a prompt marks as the owner's.
    owner: Owner,
    /// Turns run again after their fresh unit's sandbox failed them, and how often (`again`).
    sandbox_reruns: Mutex<HashMap<String, u32>>,
}

/// Who lets a finished turn's unit go once the turn is recorded (`Turns::finish_with`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// `finish_with`, at once: the unit has ended.
    Now,
    /// The start of the chat's next (spare) unit, in the same helper call, when the turn
    /// answered and a spare is wanted; else the caller, once the unit has ended.
    WithSpare,
    /// Nobody: there is no unit left to let go.
    No,
}

impl Turns {
    pub fn new(
        store: Store,
        bus: Arc<Bus>,
        linq: Arc<LinqClient>,
        cfg: crate::config::Live,
        results_dir: PathBuf,
        wake: Arc<Notify>,
        outbox_wake: Arc<Notify>,
    ) -> Self {
        let (spare_tx, spare_rx) = mpsc::unbounded_channel();
        Self {
            store,
            bus,
            linq,
            results: ResultFiles::new(results_dir),
            wake,
            outbox_wake,
            busy: Mutex::new(HashSet::new()),
            spares: Spares::default(),
            spare_tx,
            spare_rx: Mutex::new(Some(spare_rx)),
            owner: Owner::new(&cfg.get().owner.handles),
            cfg,
            sandbox_reruns: Mutex::new(HashMap::new()),
        }
    }

    fn sandbox_reruns(&self, turn: &str) -> u32 {
        self.sandbox_reruns
            .lock()
            .map(|m| m.get(turn).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn count_sandbox_rerun(&self, turn: &str) {
        if let Ok(mut m) = self.sandbox_reruns.lock() {
            *m.entry(turn.to_owned()).or_default() += 1;
        }
    }

    fn forget_sandbox_reruns(&self, turn: &str) {
        if let Ok(mut m) = self.sandbox_reruns.lock() {
            m.remove(turn);
        }
    }

    fn busy_chats(&self) -> Vec<String> {
        self.busy
            .lock()
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn claim(&self, chat: &str) -> bool {
        self.busy
            .lock()
            .map(|mut b| b.insert(chat.to_owned()))
            .unwrap_or(false)
    }

    fn unclaim(&self, chat: &str) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(chat);
        }
        self.wake.notify_one();
    }

    /// Resume turns that were in flight when the gateway stopped, then dispatch forever.
    pub async fn run(self: Arc<Self>) {
        let mut referenced = Vec::new();
        match self.store.call(queries::inflight_turns).await {
            Ok(jobs) => {
                for job in jobs {
                    referenced.push(job.turn_id.clone());
                    referenced.push(job.unit_id());
                    if self.claim(&job.chat_id) {
                        tracing::info!(chat = %job.chat_id, turn = %job.turn_id, status = %job.status, "resuming turn after restart");
                        let me = self.clone();
                        tokio::spawn(async move { me.resume(job).await });
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read in-flight turns"),
        }
        // Before anything new can start: what is not referenced now is left over.
        self.clone().release_orphans(referenced).await;
        if let Some(rx) = self.spare_rx.lock().ok().and_then(|mut r| r.take()) {
            tokio::spawn(self.clone().spare_loop(rx));
        }
        loop {
            self.dispatch().await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    async fn dispatch(self: &Arc<Self>) {
        let busy = self.busy_chats();
        let free = self
            .cfg
            .get()
            .turns
            .max_concurrent
            .saturating_sub(busy.len());
        if free == 0 {
            return;
        }
        let jobs = match self
            .store
            .call(move |t| queries::runnable_turns(t, free, &busy))
            .await
        {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the turn queue");
                return;
            }
        };
        for job in jobs {
            if self.claim(&job.chat_id) {
                let me = self.clone();
                tokio::spawn(async move { me.start(job).await });
            }
        }
    }

    async fn start(self: Arc<Self>, job: TurnJob) {
        let chat = job.chat_id.clone();
        let span = tracing::info_span!("turn", chat = %job.chat_id, turn = %job.turn_id);
        let r =
            tracing::Instrument::instrument(self.clone().start_inner(job.clone()), span.clone())
                .await;
        if let Err(reason) = r {
            tracing::Instrument::instrument(self.finish_without_unit(&job, reason), span).await;
        }
        self.unclaim(&chat);
    }

    async fn resume(self: Arc<Self>, job: TurnJob) {
        let chat = job.chat_id.clone();
        let span = tracing::info_span!("turn", chat = %job.chat_id, turn = %job.turn_id);
        tracing::Instrument::instrument(self.clone().resume_inner(job), span).await;
        self.unclaim(&chat);
    }

    async fn resume_inner(self: Arc<Self>, job: TurnJob) {
        let unit = match TurnId::parse(&job.unit_id()) {
            Ok(t) => t.unit_name(),
            Err(e) => {
                return self
                    .finish_without_unit(&job, Failure::internal(e.to_string()))
                    .await
            }
        };
        // Only systemd knows whether the unit exists. Until it answers, this chat waits: giving
        // up here would leave the turn 'starting' (blocking the chat until the next restart),
        // and guessing could run the turn twice or declare a running one lost.
        let exists = loop {
            match self.bus.unit_exists(&unit).await {
                Ok(e) => break e,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask systemd about the turn; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        };
        // A unit that is gone may still have left a complete answer (e.g. it ran, then the
        // whole system restarted); use it rather than run the turn again or call it lost.
        let result = if exists {
            None
        } else {
            self.results.read(&job.unit_id())
        };
        match exists {
            true => self.watch_and_finish(job, unit, false, None).await,
            false if result.is_some() => self.finish(job, None, result).await,
            false if job.status == "starting" => {
                // Never reached systemd (or vanished before it ran): start it afresh.
                tracing::info!("turn was not started before the restart; starting it now");
                if let Err(reason) = self.clone().start_inner(job.clone()).await {
                    self.finish_without_unit(&job, reason).await;
                }
            }
            false => {
                // The unit is gone (systemd restarted, or someone released it) with no answer.
                self.finish_without_unit(&job, Failure::interrupted()).await;
            }
        }
    }

    async fn start_inner(self: Arc<Self>, job: TurnJob) -> Result<(), Failure> {
        let chat = {
            let id = job.chat_id.clone();
            self.store
                .call(move |t| queries::chat(t, &id))
                .await
                .map_err(Failure::store)?
        }
        .ok_or_else(|| Failure::internal("chat row missing".into()))?;
        // Spare starts wait while a chat's first turn is being started (see `Spares::make_way`):
        // the slowest start there is (a user, a home, a sandbox), which no spare can have
        // served. Not for other turns in fresh units: a spare start held back for those would
        // leave more chats without one, and more turns in fresh units.
        let mut starting = chat
            .unix_user
            .is_none()
            .then(|| self.spares.turn_starting());

        let cfg = self.cfg.get();
        if let Some(budget) = chat.daily_budget_usd.or(cfg.turns.daily_budget_usd) {
            let (id, since) = (chat.id.clone(), utc_midnight_ms());
            let spent = self
                .store
                .call(move |t| crate::store::channel::spent_since(t, &id, since))
                .await
                .map_err(Failure::store)?;
            if spent >= budget {
                return Err(Failure {
                    outcome: O::BudgetExhausted,
                    error: format!("this chat spent ${spent:.4} of its ${budget:.2} today (UTC)"),
                });
            }
        }
        if let Some(total) = cfg.turns.daily_budget_total_usd {
            let since = utc_midnight_ms();
            let spent = self
                .store
                .call(move |t| crate::store::channel::spent_since_all(t, since))
                .await
                .map_err(Failure::store)?;
            if spent >= total {
                return Err(Failure {
                    outcome: O::BudgetExhausted,
                    error: format!(
                        "all chats together spent ${spent:.4} of the ${total:.2} a day of turns.daily_budget_total_usd today (UTC)"
                    ),
                });
            }
        }

        if chat.unix_user.is_none() {
            // EnsureChat is idempotent, and the bus starts the helper again: a helper that went
            // away mid-call (killed, crashed) gets one more try before the chat is told.
            let (user, uid, home, slice) = match self.bus.ensure_chat(&chat.id).await {
                Err(BusError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "the helper went away while provisioning; asking again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.bus.ensure_chat(&chat.id).await
                }
                r => r,
            }
            .map_err(Failure::bus)?;
            tracing::info!(user = %user, uid, home = %home, slice = %slice, "chat provisioned");
            let id = chat.id.clone();
            self.store
                .call(move |t| queries::set_provisioned(t, &id, &user, uid, &home))
                .await
                .map_err(Failure::store)?;
        }

        {
            let id = job.turn_id.clone();
            self.store
                .call(move |t| queries::set_turn_status(t, &id, "starting", None))
                .await
                .map_err(Failure::store)?;
        }
        let discriminate = job.kind == TurnKind::Discriminate;
        if !chat.is_group && !discriminate {
            let (linq, id) = (self.linq.clone(), chat.id.clone());
            tokio::spawn(async move {
                if let Err(e) = linq.start_typing(&id).await {
                    tracing::debug!(error = %e, "typing indicator");
                }
            });
        }

        if chat.is_group && !discriminate {
            self.ack_if_long(&job);
        }
        let mut prompt = self.prompt_for(&job, &chat).await?;
        // The message's media, fetched into the chat's inbox now (URLs may expire), and said.
        prompt.push_str(
            &crate::media::fetch_for_message(
                &self.store,
                &self.bus,
                &self.cfg.get(),
                &chat.id,
                job.message_id,
            )
            .await
            .map_err(Failure::store)?,
        );
        // consent (SPEC C2): the owner's grants for this turn, used up by it; the agent is told
        // where each file is.
        let (grants, prompt) = if discriminate {
            (Vec::new(), prompt)
        } else {
            let (id, chat_id) = (job.turn_id.clone(), chat.id.clone());
            let (grants, import) = self
                .store
                .call(move |t| {
                    let g = crate::consent::store::grants_for_turn(t, &id, &chat_id)?;
                    crate::consent::store::consume(t, &id)?;
                    Ok((g, crate::consent::store::import_note(t, &id)?))
                })
                .await
                .map_err(Failure::store)?;
            let mut notes: Vec<String> = grants
                .iter()
                .enumerate()
                .map(|(n, g)| {
                    picortex_proto::consent::grant_note(
                        &g.path,
                        &picortex_proto::consent::shared_mount(n),
                    )
                })
                .collect();
            notes.extend(import);
            if !grants.is_empty() {
                tracing::info!(grants = grants.len(), "turn runs with the owner's grants");
            }
            let grants: Vec<(String, String)> = grants
                .into_iter()
                .map(|g| (g.source_chat, g.path))
                .collect();
            (grants, crate::consent::granted_prompt(&notes, &prompt))
        };
        let request = TurnRequest {
            turn_id: job.turn_id.clone(),
            chat_id: chat.id.clone(),
            session_id: chat.session_id.clone(),
            resume: chat.session_started,
            prompt,
            permission_mode: chat
                .permission_mode
                .clone()
                .unwrap_or_else(|| self.cfg.get().turns.permission_mode.clone()),
            append_system_prompt: if discriminate {
                None
            } else {
                self.system_prompt()
            },
            kind: if discriminate {
                proto_turn::TurnKind::Discriminate
            } else {
                proto_turn::TurnKind::Answer
            },
            model: discriminate.then(|| self.cfg.get().attention.discriminator_model.clone()),
        };
        let limits = self.limits_for(&chat, self.cfg.get().turns.runtime_max_s);
        // A spare was started without grants: a granted turn never runs in one. Nor in one
        // started under other limits (the chat's memory limit or the configuration changed
        // since): its slice has those, so the turn starts fresh, with these.
        let mut spare = grants
            .is_empty()
            .then(|| self.spares.take(&chat.id))
            .flatten();
        if let Some(s) = spare.take_if(|s| !crate::spares::same_slice_limits(&s.limits, &limits)) {
            tracing::info!(unit = %s.unit, "the chat's spare unit was started under other limits; starting a fresh one");
            self.let_go(s).await;
        }
        if let Some(spare) = spare {
            starting.take();
            match self
                .hand_to_spare(&job, chat.archived, spare, request.clone())
                .await
            {
                Ok(job) => {
                    let unit = job.unit.clone().unwrap_or_default();
                    self.watch_and_finish(job, unit, true, None).await;
                    return Ok(());
                }
                Err(e) => tracing::warn!(error = %e, "spare unit unusable; starting a fresh one"),
            }
        }
        let req_fd = request_memfd(&request)
            .map_err(|e| Failure::internal(format!("request memfd: {e}")))?;
        let res_fd = self
            .results
            .create(&job.turn_id)
            .map_err(|e| Failure::internal(format!("result file: {e}")))?;
        crate::failpoint::hit("turn-before-start");
        let unit = match self
            .bus
            .start_granted_turn(&chat.id, &job.turn_id, req_fd, res_fd, &limits, &grants)
            .await
            .map_err(Failure::bus)?
        {
            Started::Started(u) => u,
            Started::AlreadyRunning(u) => {
                tracing::info!(unit = %u, "turn unit already exists; watching it");
                u
            }
        };
        tracing::info!(unit = %unit, session = %request.session_id, resume = request.resume, "turn started");
        self.bus
            .turn_started(&job.chat_id, &job.turn_id, job.kind.as_str())
            .await;
        crate::failpoint::hit("turn-started");
        self.mark_running(&job, &unit, chat.archived)
            .await
            .map_err(Failure::store)?;
        let job = TurnJob {
            unit: Some(unit.clone()),
            ..job
        };
        self.watch_and_finish(job, unit, false, starting).await;
        Ok(())
    }

    /// Wait for the turn's unit to end, then finish the turn. For a unit started fresh, systemd
    /// enforces `RuntimeMaxUSec` and this wait is only a backstop; a spare's unit started before
    /// its turn, so the turn's own time limit is kept here: past it, the unit is stopped.
    /// `starting`, a chat's first turn's hold on spare starts (see `Spares::make_way`), is let
    /// go once the unit answers or ends, or `COLD_SETUP_GRACE` after its start.
    async fn watch_and_finish(
        &self,
        job: TurnJob,
        unit: String,
        spare: bool,
        mut starting: Option<crate::spares::TurnStarting<'_>>,
    ) {
        let give_up = self.cfg.get().runtime_max()
            + if spare {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(60)
            };
        let unit_id = job.unit_id();
        let mut ended = Box::pin(self.bus.wait_unit(&unit, give_up));
        let mut answer = Box::pin(self.results.succeeded(&unit_id));
        let grace = tokio::time::sleep(COLD_SETUP_GRACE);
        tokio::pin!(grace);
        let answered = loop {
            tokio::select! {
                biased;
                end = &mut ended => break Err(end),
                r = &mut answer => break Ok(r),
                () = &mut grace, if starting.is_some() => starting = None,
            }
        };
        drop(starting);
        drop(answer);
        let end = match answered {
            Ok(result) => {
                // picortex-run has answered and is on its way out: the answer need not wait
                // for systemd to report that (see `results`). The unit is let go once it has.
                // The watch is dropped meanwhile: a signal stream nobody reads while the turn is
                // recorded (D-Bus calls of its own) must not hold up the connection.
                drop(ended);
                crate::failpoint::hit("turn-ended");
                // The unit goes with the start of the chat's next one, when there is one (one
                // helper call for both); else here, once it has ended.
                if self
                    .finish_with(job, None, Some(result), Release::WithSpare)
                    .await
                {
                    if let Err(e) = self.bus.wait_unit(&unit, give_up).await {
                        tracing::warn!(unit = %unit, error = %e, "turn unit did not end after its answer; stopping it");
                    }
                    self.release_unit(&unit_id).await;
                }
                return;
            }
            Err(end) => end,
        };
        match end {
            Ok(end) => {
                crate::failpoint::hit("turn-ended");
                let result = self.results.read(&job.unit_id());
                self.finish(job, Some(end), result).await;
            }
            Err(e) if spare => {
                tracing::warn!(unit = %unit, error = %e, "turn exceeded its time limit in a spare unit; stopping it");
                if let Err(e) = self.bus.release_turn(&job.unit_id()).await {
                    tracing::warn!(error = %e, "could not stop the turn unit");
                }
                let end = UnitEnd {
                    active_state: "failed".into(),
                    result: "timeout".into(),
                    exec_main_code: 2,
                    exec_main_status: 15,
                };
                self.finish(job, Some(end), None).await;
            }
            Err(e) => {
                tracing::error!(unit = %unit, error = %e, "lost track of the turn unit");
                self.finish_without_unit(
                    &job,
                    Failure {
                        outcome: O::UnitLost,
                        error: e.to_string(),
                    },
                )
                .await;
            }
        }
    }

    async fn finish(&self, job: TurnJob, end: Option<UnitEnd>, result: Option<TurnResult>) {
        let release = if end.is_some() {
            Release::Now
        } else {
            Release::No
        };
        self.finish_with(job, end, result, release).await;
    }

    /// Record the turn's end and answer, and let its unit go as `release` says. Returns true
    /// when the caller is left to let it go (`Release::WithSpare`, and no spare start took it).
    async fn finish_with(
        &self,
        job: TurnJob,
        end: Option<UnitEnd>,
        result: Option<TurnResult>,
        release: Release,
    ) -> bool {
        // Nothing ran, and running the turn again in a fresh unit will do (see `again`).
        let in_spare = job.unit_id() != job.turn_id;
        let why = again::nothing_ran(result.as_ref().map(|r| r.outcome), end.as_ref());
        let reruns = self.sandbox_reruns(&job.turn_id);
        let run_again = again::run_again(why, in_spare, reruns);
        let counted = run_again && again::counts(why, in_spare);
        if counted {
            self.count_sandbox_rerun(&job.turn_id);
        } else if !run_again {
            self.forget_sandbox_reruns(&job.turn_id);
        }
        if job.kind == TurnKind::Discriminate && !run_again {
            let failed = match &result {
                Some(r) if r.outcome == Outcome::Ok => None,
                Some(_) | None => {
                    Some(reply::compose(end.as_ref(), result.as_ref(), &self.cfg.get()).outcome)
                }
            };
            self.finish_discriminator(&job, result.as_ref(), failed)
                .await;
            if release == Release::Now {
                self.release_unit(&job.unit_id()).await;
            }
            return release == Release::WithSpare;
        }
        if run_again {
            let reason = why.map(|w| w.reason(in_spare)).unwrap_or_default();
            if counted {
                tracing::info!(
                    rerun = reruns + 1,
                    max = again::FRESH_SANDBOX_RERUNS,
                    "{reason}; queueing the turn again for a fresh unit"
                );
            } else {
                tracing::info!("{reason}; queueing the turn again for a fresh unit");
            }
            let id = job.turn_id.clone();
            if let Err(e) = self
                .store
                .call(move |t| queries::requeue_turn(t, &id))
                .await
            {
                tracing::error!(error = %e, "cannot requeue the turn");
            }
            let _ = self.bus.release_turn(&job.unit_id()).await;
            self.results.remove(&job.unit_id());
            return false;
        }
        let r = reply::compose(end.as_ref(), result.as_ref(), &self.cfg.get());
        let fin = Finished {
            outcome: r.outcome,
            unit_result: end.as_ref().map(|e| e.result.clone()),
            error: r.error.clone(),
            session_id: result.as_ref().and_then(|r| r.session_id.clone()),
            new_session: result.as_ref().is_some_and(|r| r.new_session),
            session_exists: result
                .as_ref()
                .is_some_and(|r| r.session_id.is_some() && r.outcome != Outcome::Refused),
            cost_usd: result.as_ref().and_then(|r| r.cost_usd),
            input_tokens: result
                .as_ref()
                .and_then(|r| r.usage.as_ref().map(|u| u.input_tokens)),
            output_tokens: result
                .as_ref()
                .and_then(|r| r.usage.as_ref().map(|u| u.output_tokens)),
            duration_ms: result.as_ref().and_then(|r| r.duration_ms),
        };
        let requests = result
            .as_ref()
            .filter(|r| r.outcome == Outcome::Ok)
            .map(|r| r.requests.clone())
            .unwrap_or_default();
        self.record(&job, fin, &r.text, &requests).await;
        // picortex-run says whether the agent left anything in outbox/ (the helper would find
        // nothing otherwise, after a polkit check and a D-Bus round trip per turn).
        let outbox = result.as_ref().is_some_and(|r| r.outbox);
        if r.outcome == O::Ok && outbox {
            // Files the agent left in outbox/ go after the reply, in the same thread.
            let spool = self.results.dir().with_file_name("spool");
            let n = crate::media::out::collect(
                &self.store,
                &self.bus,
                &spool,
                &job.chat_id,
                &job.turn_id,
                job.reply_to.as_deref(),
            )
            .await;
            if n > 0 {
                self.outbox_wake.notify_one();
            }
        }
        if release == Release::Now {
            self.release_unit(&job.unit_id()).await;
        }
        let unit = (release == Release::WithSpare).then(|| job.unit_id());
        let handed_on = r.outcome == O::Ok
            && self
                .spare_tx
                .send(crate::spares::Ask {
                    chat: job.chat_id.clone(),
                    release: unit,
                })
                .is_ok();
        release == Release::WithSpare && !handed_on
    }

    /// At start-up: release every turn unit, and delete every result file, that no in-flight
    /// turn refers to: those of turns recorded as done whose release a crash cut short (a unit
    /// kept by RemainAfterExit stays loaded until someone releases it), and the spares of the
    /// previous run, whose pipes closed with it.
    async fn release_orphans(self: Arc<Self>, referenced: Vec<String>) {
        let units = match self.bus.turn_units().await {
            Ok(u) => u,
            Err(e) => {
                return tracing::warn!(error = %e, "cannot list turn units; finished ones stay loaded")
            }
        };
        for unit in &units {
            let Some(id) = TurnId::from_unit_name(unit) else {
                continue;
            };
            if referenced.iter().any(|r| r == id.as_str()) {
                continue;
            }
            match self.bus.release_turn(id.as_str()).await {
                Ok(()) => tracing::info!(unit = %unit, "released a turn unit no turn refers to"),
                Err(e) => {
                    tracing::warn!(unit = %unit, error = %e, "could not release the turn unit")
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(self.results.dir()) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".json").unwrap_or(&name);
                if !referenced.iter().any(|r| r == id) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Record that the turn runs in `unit`; an archived chat is no longer (the helper restored
    /// it before starting the unit).
    async fn mark_running(
        &self,
        job: &TurnJob,
        unit: &str,
        was_archived: bool,
    ) -> Result<(), crate::store::StoreError> {
        let (id, unit, chat_id) = (job.turn_id.clone(), unit.to_owned(), job.chat_id.clone());
        self.store
            .call(move |t| {
                queries::set_turn_status(t, &id, "running", Some(&unit))?;
                if was_archived {
                    crate::store::channel::set_archived(t, &chat_id, false)?;
                }
                Ok(())
            })
            .await
    }

    /// Hand a turn to its chat's spare unit: record that it runs there, then write the request
    /// into the unit's stdin and close it. Returns the job with its unit.
    async fn hand_to_spare(
        &self,
        job: &TurnJob,
        was_archived: bool,
        spare: Spare,
        mut request: TurnRequest,
    ) -> Result<TurnJob, String> {
        self.mark_running(job, &spare.unit, was_archived)
            .await
            .map_err(|e| e.to_string())?;
        crate::failpoint::hit("spare-handoff");
        self.bus
            .turn_started(&job.chat_id, &job.turn_id, job.kind.as_str())
            .await;
        request.turn_id = spare.id.clone();
        let mut writer = spare.writer;
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let wrote = tokio::task::spawn_blocking(move || writer.write_all(&body)).await;
        match wrote {
            Ok(Ok(())) => {
                // Also under the spare's own id, which is what the unit's own lines (picortex-run, the
                // agent's stderr) carry: `journalctl PICORTEX_TURN=<either>` finds this link.
                tracing::info!(turn = %spare.id, unit = %spare.unit, session = %request.session_id, resume = request.resume, "turn started in a spare unit");
                Ok(TurnJob {
                    unit: Some(spare.unit),
                    ..job.clone()
                })
            }
            Ok(Err(e)) => {
                let _ = self.bus.release_turn(&spare.id).await;
                Err(format!("writing the request to {}: {e}", spare.unit))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Start spares when asked (after a chat's turn answered) and let go of unused ones.
    async fn spare_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<crate::spares::Ask>) {
        let ttl = Duration::from_secs(self.cfg.get().turns.spare_ttl_s);
        if ttl.is_zero() {
            // Spares are off: an ask only lets its answered unit go (asks may have been queued
            // before this loop ran, by turns resumed at start-up).
            while let Some(ask) = rx.recv().await {
                if let Some(id) = ask.release {
                    self.release_unit(&id).await;
                }
            }
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        // Starts run side by side: each waits ~100 ms on systemd building a sandbox, and one at a
        // time could not keep up with chats answering faster than that (their next turns would
        // find no spare). Bounded, as the forks and mounts compete with running turns for CPU.
        let slots = Arc::new(tokio::sync::Semaphore::new(SPARE_STARTS_AT_ONCE));
        loop {
            tokio::select! {
                ask = rx.recv() => match ask {
                    Some(crate::spares::Ask { chat, release }) => {
                        let limit = self.cfg.get().turns.max_concurrent * 2;
                        let me = self.clone();
                        if !self.spares.begin(&chat, limit) {
                            if let Some(id) = release {
                                tokio::spawn(async move { me.release_unit(&id).await });
                            }
                            continue;
                        }
                        let slots = slots.clone();
                        tokio::spawn(async move {
                            let left = match slots.acquire().await {
                                Ok(_slot) => {
                                    me.spares.make_way(SPARE_YIELD_MAX, SPARE_SETTLE).await;
                                    me.make_spare(&chat, ttl, release).await
                                }
                                Err(_) => release,
                            };
                            me.spares.started(&chat);
                            if let Some(id) = left {
                                me.release_unit(&id).await;
                            }
                        });
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    for s in self.spares.expired(ttl) {
                        tracing::debug!(unit = %s.unit, "let go of an unused spare unit");
                        self.let_go(s).await;
                    }
                }
            }
        }
    }

    /// Let go of the chat's spare unit, if it has one (before its home is archived or removed).
    /// One being started is waited for first: its StartTurn, reaching the helper after the
    /// archive, would restore the home.
    pub async fn drop_spare(&self, chat_id: &str) {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while self.spares.is_starting(chat_id) && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(s) = self.spares.take(chat_id) {
            tracing::debug!(chat = %chat_id, unit = %s.unit, "let go of the chat's spare unit");
            self.let_go(s).await;
        }
    }

    /// Let a spare unit go: its pipe closes empty (picortex-run exits with `no_request`), the
    /// unit is released, its result file removed.
    async fn let_go(&self, s: Spare) {
        drop(s.writer);
        if let Err(e) = self.bus.release_turn(&s.id).await {
            tracing::warn!(unit = %s.unit, error = %e, "could not release a spare unit");
        }
        self.results.remove(&s.id);
    }

    /// The limits of a chat's turn unit and slice: the chat's own memory limit or the
    /// configuration's, and `runtime_s` as the unit's RuntimeMaxSec.
    fn limits_for(&self, chat: &queries::Chat, runtime_s: u64) -> [(&'static str, u64); 6] {
        let cfg = self.cfg.get();
        [
            (
                L::MEMORY_MAX,
                chat.memory_max.unwrap_or_else(|| cfg.memory_max_bytes()),
            ),
            (L::TASKS_MAX, cfg.turns.tasks_max),
            (L::RUNTIME_MAX_USEC, runtime_s * 1_000_000),
            (L::CPU_WEIGHT, cfg.turns.cpu_weight),
            (L::IO_WEIGHT, cfg.turns.io_weight),
            (L::CPU_QUOTA_PER_SEC_USEC, cfg.cpu_quota_per_sec_usec()),
        ]
    }

    /// Let a turn's unit go (an answered one's picortex-run is done or about to be: stopping
    /// the unit ends what is left of it). A failure is logged; at the next start the gateway
    /// releases every unit no turn refers to.
    async fn release_unit(&self, unit_id: &str) {
        if let Err(e) = self.bus.release_turn(unit_id).await {
            tracing::warn!(error = %e, "could not release the turn unit");
        }
    }

    /// Start the chat's spare unit, letting `release` (an answered turn's unit) go in the same
    /// helper call. Returns `release` when that call did not happen or failed: the caller lets
    /// it go then (releasing twice is harmless).
    async fn make_spare(
        &self,
        chat_id: &str,
        ttl: Duration,
        release: Option<String>,
    ) -> Option<String> {
        // One per chat, no more than twice as many as there can be turns at once (`begin`), and
        // not for a chat whose next turn is already waiting (the dispatcher starts it now).
        let id = chat_id.to_owned();
        // Nor for a chat with standing grants: a spare is started without any.
        let chat = match self
            .store
            .call(move |t| {
                let busy =
                    queries::has_queued(t, &id)? || crate::consent::store::has_standing(t, &id)?;
                Ok((busy, queries::chat(t, &id)?))
            })
            .await
        {
            Ok((false, Some(c))) if c.unix_user.is_some() && !c.archived => c,
            _ => return release,
        };
        let spare_id = uuid::Uuid::new_v4().simple().to_string();
        let (reader, writer) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "pipe for a spare unit");
                return release;
            }
        };
        let res_fd = match self.results.create(&spare_id) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "result file for a spare unit");
                return release;
            }
        };
        // The spare waits up to `ttl` before its turn; the gateway keeps the turn's own limit.
        let limits = self.limits_for(&chat, self.cfg.get().turns.runtime_max_s + ttl.as_secs());
        let started = match &release {
            Some(old) => {
                self.bus
                    .release_and_start_turn(old, chat_id, &spare_id, reader, res_fd, &limits)
                    .await
            }
            None => {
                self.bus
                    .start_turn(chat_id, &spare_id, reader, res_fd, &limits)
                    .await
            }
        };
        match started {
            Ok(Started::Started(unit)) | Ok(Started::AlreadyRunning(unit)) => {
                let spare = Spare {
                    id: spare_id.clone(),
                    unit: unit.clone(),
                    writer: std::fs::File::from(writer),
                    since: std::time::Instant::now(),
                    limits: limits.to_vec(),
                };
                if let Err(s) = self.spares.put(chat_id, spare) {
                    self.let_go(s).await;
                } else {
                    tracing::debug!(chat = %chat_id, unit = %unit, "spare unit ready");
                }
                None
            }
            Err(e) => {
                self.results.remove(&spare_id);
                tracing::debug!(chat = %chat_id, error = %e, "no spare unit");
                release
            }
        }
    }

    async fn finish_without_unit(&self, job: &TurnJob, f: Failure) {
        if job.kind == TurnKind::Discriminate {
            // Nobody asked: a discriminator that could not run stays quiet (or answers, when
            // configured fail-open); no failure reply goes to the chat.
            tracing::warn!(outcome = %f.outcome, error = %f.error, "discriminator turn could not run");
            return self.finish_discriminator(job, None, Some(f.outcome)).await;
        }
        tracing::error!(target: crate::catalog::TURN_FAILED.0, outcome = %f.outcome, error = %f.error, "turn failed: {}: {}", f.outcome, f.error);
        let text = reply::for_failure(f.outcome, &self.cfg.get());
        let fin = Finished {
            error: Some(f.error),
            ..Finished::new(f.outcome)
        };
        self.record(job, fin, &text, &[]).await;
    }

    /// Record the turn's end and its reply. `requests`: what its agent asked the owner for
    /// (SPEC C2), opened as disclosures in the same transaction; while any is pending, the
    /// chat's reply is the one acknowledgement instead of the agent's text.
    async fn record(
        &self,
        job: &TurnJob,
        fin: Finished,
        text: &str,
        requests: &[picortex_proto::consent::AccessRequest],
    ) {
        let text = clean::for_phone(text, self.cfg.get().linq.max_reply_chars);
        let parts = split_reply(&text, self.cfg.get().linq.max_part_chars);
        let ack = split_reply(crate::consent::ACK_TEXT, self.cfg.get().linq.max_part_chars);
        let (j, f) = (job.clone(), fin.clone());
        let (requests, owner) = (requests.to_vec(), self.owner.clone());
        let ttl_ms = (self.cfg.get().consent.ttl_s * 1000) as i64;
        match self
            .store
            .call(move |t| {
                let opened = if requests.is_empty() {
                    Default::default()
                } else {
                    crate::consent::store::open_requests(t, &j, &requests, &owner, ttl_ms)?
                };
                let parts = if opened.pending.is_empty() {
                    parts
                } else {
                    ack
                };
                queries::finish_turn(t, &j, &f, &parts)?;
                for id in &opened.pending {
                    crate::consent::store::event(
                        t,
                        *id,
                        crate::consent::Step::Acknowledged,
                        Some(&j.turn_id),
                        crate::consent::ACK_TEXT,
                    )?;
                }
                crate::consent::store::answer_failed(t, &opened.failed)?;
                Ok(())
            })
            .await
        {
            Ok(()) => {
                crate::failpoint::hit("turn-recorded");
                // The reply first; the signal and the log line after it.
                self.outbox_wake.notify_one();
                self.bus
                    .turn_finished(
                        &job.chat_id,
                        &job.turn_id,
                        fin.outcome.as_str(),
                        fin.cost_usd.unwrap_or(0.0),
                    )
                    .await;
                let level_ok = fin.outcome == O::Ok;
                if level_ok {
                    tracing::info!(outcome = %fin.outcome, cost_usd = fin.cost_usd.unwrap_or(0.0), duration_ms = fin.duration_ms.unwrap_or(0), "turn finished");
                } else {
                    let error = fin.error.as_deref().unwrap_or("");
                    tracing::warn!(target: crate::catalog::TURN_FAILED.0, outcome = %fin.outcome, error, "turn failed: {}{}{error}", fin.outcome, if error.is_empty() { "" } else { ": " });
                }
                self.results.remove(&job.unit_id());
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the turn's end; it will be resumed after a restart")
            }
        }
    }
}

impl Turns {
    /// Groups have no typing indicator: when a group turn is still running after
    /// `[turns] group_ack_after_s`, put a tapback on the message it answers, once.
    fn ack_if_long(&self, job: &TurnJob) {
        let after = self.cfg.get().turns.group_ack_after_s;
        let Some(message) = job.reply_to.clone().filter(|_| after > 0) else {
            return;
        };
        let (store, linq, turn, chat) = (
            self.store.clone(),
            self.linq.clone(),
            job.turn_id.clone(),
            job.chat_id.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(after)).await;
            let t = turn.clone();
            let running = store
                .call(move |db| queries::turn_in_flight(db, &t))
                .await
                .unwrap_or(false);
            if !running {
                return;
            }
            match linq
                .react(&message, &crate::linq::client::Reaction::Like)
                .await
            {
                Ok(()) => tracing::info!(
                    PICORTEX_CHAT = %chat,
                    PICORTEX_TURN = %turn,
                    "group turn still running after {after} s: acknowledged the message with a tapback"
                ),
                Err(e) => tracing::warn!(
                    PICORTEX_CHAT = %chat,
                    PICORTEX_TURN = %turn,
                    error = %e,
                    "could not acknowledge the message with a tapback"
                ),
            }
        });
    }

    /// The prompt of a turn: the message, with the group's recent messages and who said what
    /// (see `context`).
    async fn prompt_for(&self, job: &TurnJob, chat: &queries::Chat) -> Result<String, Failure> {
        let earlier = if chat.is_group {
            let (id, before, n) = (
                chat.id.clone(),
                job.message_id,
                self.cfg.get().attention.context_messages + 1,
            );
            self.store
                .call(move |t| queries::context_lines(t, &id, before, n))
                .await
                .map_err(Failure::store)?
        } else {
            Vec::new()
        };
        Ok(context::prompt(
            &self.owner,
            chat.is_group,
            &job.sender,
            &job.prompt,
            &earlier,
            self.cfg.get().attention.context_bounds(),
        ))
    }

    /// A discriminator turn ended: answer (an answer turn is queued in the discriminator's place,
    /// first in its chat's queue) or stay quiet; either way the decision is in the log with its
    /// score.
    async fn finish_discriminator(
        &self,
        job: &TurnJob,
        result: Option<&TurnResult>,
        failed: Option<O>,
    ) {
        // The model's text, or why there is none.
        let answer: Result<String, String> = match (failed, result.and_then(|r| r.text.clone())) {
            (None, Some(text)) => Ok(text),
            (Some(f), _) => Err(f.as_str().to_owned()),
            (None, None) => Err("no answer".to_owned()),
        };
        let policy = self.cfg.get().attention.policy();
        let (j, cost) = (job.clone(), result.and_then(|r| r.cost_usd));
        let r = self
            .store
            .call(move |t| {
                let outcome = match &answer {
                    Ok(text) => discriminator::Outcome::Answered(text),
                    Err(f) => discriminator::Outcome::Failed(f),
                };
                let since = crate::store::now_ms() - 3_600_000;
                let n = authority::unsolicited_since(t, &j.chat_id, since)?;
                let v = discriminator::decide(&policy, &outcome, n);
                let chat = queries::chat(t, &j.chat_id)?;
                let mode = Mode::of_chat(
                    chat.as_ref().and_then(|c| c.attention.as_deref()),
                    chat.as_ref().is_some_and(|c| c.is_group),
                );
                authority::record_decision(
                    t,
                    &authority::GateRecord {
                        message_id: j.message_id,
                        chat_id: &j.chat_id,
                        mode,
                        verdict: if v.answer { "answer" } else { "skip" },
                        rule: v.rule,
                        score: v.score,
                        reason: &v.reason,
                    },
                )?;
                let fin = Finished {
                    error: (!v.answer).then(|| v.reason.clone()),
                    cost_usd: cost,
                    ..Finished::new(if v.answer { O::Ok } else { O::NotAnswered })
                };
                queries::finish_turn(t, &j, &fin, &[])?;
                if v.answer {
                    queries::queue_answer_after(t, &j)?;
                }
                Ok(v)
            })
            .await;
        match r {
            Ok(v) => {
                self.bus
                    .turn_finished(
                        &job.chat_id,
                        &job.turn_id,
                        if v.answer { "ok" } else { "not_answered" },
                        cost.unwrap_or(0.0),
                    )
                    .await;
                tracing::info!(
                    answer = v.answer,
                    rule = v.rule,
                    score = v.score.unwrap_or(-1.0),
                    "discriminator decided: {}",
                    v.reason
                );
                self.results.remove(&job.unit_id());
                if v.answer {
                    self.wake.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the discriminator's decision; it is resumed after a restart")
            }
        }
    }

    /// The owner's standing instructions, read afresh for each turn so edits apply at once.
    fn system_prompt(&self) -> Option<String> {
        let path = self.cfg.get().turns.system_prompt_file.clone()?;
        let mut text = String::new();
        match std::fs::File::open(&path).and_then(|f| f.take(64 * 1024).read_to_string(&mut text)) {
            Ok(_) if !text.trim().is_empty() => Some(text),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "system prompt file unreadable; turn runs without it");
                None
            }
        }
    }
}

/// Archive chats idle longer than `turns.archive_after_days` (SPEC P5), checking hourly.
/// Raw webhook bodies older than `[data] raw_webhook_days` are emptied, hourly.
pub async fn expire_raw_webhooks(store: Store, cfg: Arc<Config>) {
    let days = cfg.data.raw_webhook_days;
    if days == 0 {
        return;
    }
    loop {
        let before = crate::store::now_ms() - i64::from(days) * 86_400_000;
        match store
            .call(move |t| crate::store::channel::expire_raw_webhooks(t, before))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                count = n,
                "emptied {n} raw webhook bodies older than {days} days (data.raw_webhook_days)"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot expire raw webhook bodies: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

pub async fn archive_idle(store: Store, bus: Arc<Bus>, cfg: Arc<Config>) {
    let Some(days) = cfg.turns.archive_after_days else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let before = crate::store::now_ms() - i64::from(days) * 86_400_000;
        let chats = store
            .call(move |t| crate::store::channel::idle_chats(t, before))
            .await
            .unwrap_or_default();
        for chat in chats {
            match bus.archive_chat(&chat).await {
                Ok(path) => {
                    tracing::info!(chat = %chat, archive = %path, idle_days = days, "archived idle chat");
                    let c = chat.clone();
                    let _ = store
                        .call(move |t| crate::store::channel::set_archived(t, &c, true))
                        .await;
                }
                Err(e) => tracing::warn!(chat = %chat, error = %e, "could not archive idle chat"),
            }
        }
        tokio::time::sleep(Duration::from_secs(3540)).await;
    }
}

fn utc_midnight_ms() -> i64 {
    let now = crate::store::now_ms();
    now - now.rem_euclid(86_400_000)
}

/// Why a turn could not run; `outcome` is the stored outcome, which picks the reply.
#[derive(Debug)]
pub struct Failure {
    pub outcome: O,
    pub error: String,
}

impl Failure {
    fn internal(error: String) -> Self {
        Self {
            outcome: O::InternalError,
            error,
        }
    }
    fn store(e: crate::store::StoreError) -> Self {
        Self {
            outcome: O::InternalError,
            error: e.to_string(),
        }
    }
    fn bus(e: BusError) -> Self {
        let outcome = match e {
            BusError::Unavailable(_) => O::HelperUnavailable,
            BusError::Denied(_) => O::HelperDenied,
            BusError::Helper(_) | BusError::Exists(_) | BusError::Systemd(_) => {
                O::UnitFailedToStart
            }
        };
        Self {
            outcome,
            error: e.to_string(),
        }
    }
    fn interrupted() -> Self {
        Self {
            outcome: O::Interrupted,
            error: "the turn's unit disappeared before it reported (system restart?)".into(),
        }
    }
}

/// A sealed memfd holding the request, rewound: it becomes the unit's stdin.
fn request_memfd(req: &TurnRequest) -> std::io::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        "picortex-turn-request",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&serde_json::to_vec(req)?)?;
    f.rewind()?;
    let seals = nix::fcntl::SealFlag::F_SEAL_WRITE
        | nix::fcntl::SealFlag::F_SEAL_GROW
        | nix::fcntl::SealFlag::F_SEAL_SHRINK
        | nix::fcntl::SealFlag::F_SEAL_SEAL;
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_ADD_SEALS(seals))?;
    Ok(f.into())
}
