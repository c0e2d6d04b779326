//! The driver of the control-plane plan: observe (LocalAPI/Headscale I/O) → decide
//! (`headcni_core::control::plan`, pure) → act (I/O) → repeat, bounded by the approval
//! deadline (waits) and by a step budget between waits (a plan that did not settle).

use std::time::Duration;

use headcni_core::control::plan::{
    ControlObservation, ControlStep, DeviceView, NodeLookup, PlanFailure, Wanted, next_step,
    next_withdraw_step, prefs_conflict,
};
use headcni_core::control::{ControlPlaneError, RouteState};
use tokio::time::Instant;

use super::views::{
    agent_view, device_view, hs_err, la_err, masked_prefs, node_view, prefs_view, route_model,
    row_views,
};
use super::{ApprovalMode, TailnetBackend};
use crate::headscale::HeadscaleClient;
use crate::retry::Retryable;
use crate::tailscale_api::{NodeRef, TailscaleApi};

/// Most steps between two waits. A phase of the plan takes at most a dozen (status, prefs
/// with their own bounded retries, model, node, one write, a confirmation, a poll); more means
/// the plan and the servers disagree, and the driver stops instead of spinning.
const MAX_STEPS_BETWEEN_WAITS: u32 = 64;

/// Which plan the driver follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// `ensure_routes`: `plan::next_step`.
    Ensure,
    /// `withdraw_routes`: `plan::next_withdraw_step`.
    Withdraw,
}

/// One reconcile or withdrawal in progress.
pub(super) struct Drive<'a> {
    b: &'a TailnetBackend,
    wanted: Wanted,
    op: Op,
    obs: ControlObservation,
    /// Set when the plan first goes past the prefs (the approval and primary waits share it).
    deadline: Option<Instant>,
    rows_delay: Duration,
    device_delay: Duration,
    primary_delay: Duration,
}

impl<'a> Drive<'a> {
    pub(super) fn new(b: &'a TailnetBackend, wanted: Wanted, op: Op) -> Self {
        Drive {
            b,
            wanted,
            op,
            obs: ControlObservation::default(),
            deadline: None,
            rows_delay: b.first_poll(),
            device_delay: b.first_poll(),
            primary_delay: b.first_poll(),
        }
    }

    /// Lets the plan take routes already primary as approved (no control-server read).
    pub(super) fn trusting_primary(mut self, trust: bool) -> Self {
        self.obs.trust_primary = trust;
        self
    }

    /// What was observed (for the status after [`Drive::run`]).
    pub(super) fn into_observation(self) -> ControlObservation {
        self.obs
    }

    fn decide(&self) -> ControlStep {
        match self.op {
            Op::Ensure => next_step(&self.wanted, &self.obs),
            Op::Withdraw => next_withdraw_step(&self.wanted, &self.obs),
        }
    }

    /// Runs the plan to its end: `Ok(Some(state))` when ready (ensure), `Ok(None)` when
    /// withdrawn, or the plan's or an I/O failure.
    pub(super) async fn run(&mut self) -> Result<Option<RouteState>, PlanFailure> {
        let mut steps = 0u32;
        loop {
            self.obs.deadline_passed = self.deadline.is_some_and(|d| Instant::now() >= d);
            let step = self.decide();
            if self.deadline.is_none() && !step.is_before_approval() {
                self.deadline = Some(Instant::now() + self.b.opts.approval_timeout);
            }
            steps += 1;
            if steps > MAX_STEPS_BETWEEN_WAITS {
                return Err(ControlPlaneError::Conflict {
                    reason: format!(
                        "the control-plane plan did not settle within {MAX_STEPS_BETWEEN_WAITS} steps (last: {step:?})"
                    ),
                }
                .into());
            }
            match step {
                ControlStep::ObserveAgent => {
                    let st = self
                        .b
                        .la("localapi status", || self.b.localapi.status_without_peers())
                        .await?;
                    self.obs.agent = Some(agent_view(&st));
                }
                ControlStep::ObservePrefs | ControlStep::PatchPrefs(_) => {
                    self.settle_prefs().await?;
                }
                ControlStep::ObserveRouteModel => {
                    let client = self.client()?;
                    let g = self
                        .b
                        .hs("headscale detect", || client.generation())
                        .await?;
                    self.obs.approval.model = Some(route_model(g));
                }
                ControlStep::ObserveNode { node_id } => {
                    let client = self.client()?;
                    self.obs.approval.node = match client.get_node(node_id).await {
                        Ok(n) => NodeLookup::Found(node_view(&n)),
                        Err(e) if e.is_not_found() => NodeLookup::NotFound,
                        Err(e) if e.is_retryable() => {
                            let n = self
                                .b
                                .hs("headscale get node", || client.get_node(node_id))
                                .await?;
                            NodeLookup::Found(node_view(&n))
                        }
                        Err(e) => return Err(hs_err(e).into()),
                    };
                }
                ControlStep::ApproveRoutes { node_id, routes } => {
                    let client = self.client()?;
                    match self.op {
                        Op::Ensure => {
                            tracing::info!(node_id, routes = ?routes, "approving routes (approve_routes)")
                        }
                        Op::Withdraw => {
                            tracing::info!(node_id, routes = ?routes, "withdrawing approvals (approve_routes)")
                        }
                    }
                    let updated = self
                        .b
                        .hs("headscale approve_routes", || {
                            client.approve_routes(node_id, &routes)
                        })
                        .await?;
                    self.obs
                        .record_approve_routes_answer(updated.approved_routes);
                }
                ControlStep::ObserveRouteRows { node_id } => {
                    let client = self.client()?;
                    let rows = self
                        .b
                        .hs("headscale node routes", || client.node_routes(node_id))
                        .await?;
                    self.obs.approval.route_rows = Some(row_views(&rows));
                }
                ControlStep::EnableRouteRows { node_id, rows } => {
                    let client = self.client()?;
                    for (rid, p) in &rows {
                        let rid = *rid;
                        tracing::info!(node_id, route = %p, route_id = rid, "enabling route row");
                        self.b
                            .hs("headscale enable route", || client.enable_route(rid))
                            .await?;
                    }
                    let ids: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
                    self.obs.record_rows_enabled(&ids);
                }
                ControlStep::ConfirmRouteRows { node_id } => {
                    let client = self.client()?;
                    let rows = self
                        .b
                        .hs("headscale node routes", || client.node_routes(node_id))
                        .await?;
                    self.obs.approval.route_rows_confirmed = Some(
                        rows.iter()
                            .filter(|r| r.enabled)
                            .filter_map(|r| r.prefix)
                            .collect(),
                    );
                }
                ControlStep::DisableRouteRows { route_ids } => {
                    let client = self.client()?;
                    for &rid in &route_ids {
                        self.b
                            .hs("headscale disable route", || client.disable_route(rid))
                            .await?;
                    }
                    self.obs.record_rows_disabled(&route_ids);
                }
                ControlStep::WaitRouteRows { .. } => {
                    tokio::time::sleep(self.rows_delay).await;
                    self.rows_delay = self.b.next_poll(self.rows_delay);
                    self.obs.approval.route_rows = None;
                    steps = 0;
                }
                ControlStep::ApproveDevice {
                    node_key,
                    stable_id,
                    routes,
                } => {
                    let api = self.tailscale_api()?;
                    let node = NodeRef::new(node_key, stable_id);
                    let res = self
                        .b
                        .ts("tailscale API approve", || api.approve(&node, &routes))
                        .await;
                    self.obs.approval.device = device_view(res)?;
                }
                ControlStep::WaitDevice { pending } => {
                    tracing::debug!(
                        ?pending,
                        "device does not advertise the routes yet (tailscale API)"
                    );
                    tokio::time::sleep(self.device_delay).await;
                    self.device_delay = self.b.next_poll(self.device_delay);
                    self.obs.approval.device = DeviceView::NotAsked;
                    steps = 0;
                }
                ControlStep::WithdrawDevice {
                    node_key,
                    stable_id,
                    routes,
                } => {
                    let api = self.tailscale_api()?;
                    let node = NodeRef::new(node_key, stable_id);
                    let res = self
                        .b
                        .ts("tailscale API withdraw", || api.withdraw(&node, &routes))
                        .await;
                    self.obs.approval.device = device_view(res)?;
                }
                ControlStep::ObservePrimary => {
                    let st = self
                        .b
                        .la("localapi status", || self.b.localapi.status_without_peers())
                        .await?;
                    self.obs.primary = Some(st.self_.map(|s| s.primary_routes).unwrap_or_default());
                }
                ControlStep::WaitPrimary { .. } => {
                    tokio::time::sleep(self.primary_delay).await;
                    self.primary_delay = self.b.next_poll(self.primary_delay);
                    self.obs.primary = None;
                    steps = 0;
                }
                ControlStep::Ready(state) => return Ok(Some(state)),
                ControlStep::Withdrawn => return Ok(None),
                ControlStep::Fail(f) => return Err(f),
            }
        }
    }

    /// The Headscale client; the plan asks for Headscale only with API approval.
    fn client(&self) -> Result<&'a HeadscaleClient, PlanFailure> {
        match &self.b.approval {
            ApprovalMode::Api(c) => Ok(c),
            ApprovalMode::AutoApprovers | ApprovalMode::TailscaleApi(_) => {
                Err(ControlPlaneError::Conflict {
                    reason: "the control-plane plan asked for the Headscale API without an API key"
                        .to_string(),
                }
                .into())
            }
        }
    }

    /// The Tailscale API client; the plan asks for it only with `approval = "tailscale-api"`.
    fn tailscale_api(&self) -> Result<&'a TailscaleApi, PlanFailure> {
        match &self.b.approval {
            ApprovalMode::TailscaleApi(c) => Ok(c),
            _ => Err(ControlPlaneError::Conflict {
                reason: "the control-plane plan asked for the Tailscale API without a client"
                    .to_string(),
            }
            .into()),
        }
    }

    /// Read-modify-write of the prefs until the plan wants no patch. The LocalAPI has no
    /// compare-and-swap: the list is re-read just before a PATCH that replaces
    /// `AdvertiseRoutes` (a change restarts the cycle) and after it (a concurrent overwrite
    /// restarts the cycle); [`prefs_conflict`] after
    /// [`super::BackendOptions::prefs_write_attempts`] cycles.
    async fn settle_prefs(&mut self) -> Result<(), PlanFailure> {
        let b = self.b;
        let attempts = b.opts.prefs_write_attempts.max(1);
        for attempt in 0..attempts {
            let cur = prefs_view(
                &b.la("localapi prefs", || b.localapi.prefs()).await?,
                self.obs.agent.as_ref(),
            );
            self.obs.prefs = Some(cur.clone());
            let ControlStep::PatchPrefs(patch) = self.decide() else {
                return Ok(());
            };
            if patch.advertise_routes.is_some() {
                let again = b.la("localapi prefs", || b.localapi.prefs()).await?;
                if again.advertise_routes != cur.advertise_routes {
                    tracing::info!(
                        attempt,
                        "AdvertiseRoutes changed by another writer; re-reading"
                    );
                    continue;
                }
            }
            tracing::info!(
                advertise_routes = ?patch.advertise_routes,
                route_all = ?patch.route_all,
                no_snat = ?patch.no_snat,
                no_stateful_filtering = ?patch.no_stateful_filtering,
                "patching tailscaled prefs"
            );
            match b.localapi.patch_prefs(&masked_prefs(&patch)).await {
                Ok(_) => {}
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "PATCH prefs failed; retrying");
                    tokio::time::sleep(b.opts.backoff.delay(attempt)).await;
                    continue;
                }
                Err(e) => return Err(la_err(e).into()),
            }
            let after = b.la("localapi prefs", || b.localapi.prefs()).await?;
            self.obs.prefs = Some(prefs_view(&after, self.obs.agent.as_ref()));
            if !matches!(self.decide(), ControlStep::PatchPrefs(_)) {
                return Ok(());
            }
            tracing::info!(
                attempt,
                "prefs overwritten concurrently after PATCH; retrying"
            );
        }
        Err(prefs_conflict(attempts))
    }
}
