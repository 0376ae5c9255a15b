//! The `provision` handler (DESIGN §10, §11): create, suspend, unsuspend, change_package,
//! terminate, change_password, reapply_package, apply_security, apply_email_policy,
//! add_domain, remove_domain and create_database, each a sequence of idempotent steps.
//!
//! # Why it is shaped like this
//! - **Every step is idempotent**, on the host (the agent's operations answer "already so"
//!   instead of failing) and in the store, so a retried job — after a crash, a lost lease, or a
//!   WHMCS Module Queue retry — finishes the work instead of tripping over what exists. A step
//!   that fails leaves a state the next attempt completes; the account row only turns `active`
//!   (or `suspended`, `terminated`) after the host steps succeeded.
//! - **Stages are the steps**, reported with `done/total`, so `npanel watch` and the WebSocket
//!   show which step a job is on.
//! - **The host is behind [`HostOps`]**: the privileged agent over its socket in production, or
//!   the same operations in-process against `<data_dir>/host` (the embedded default). Requests
//!   are the agent's typed [`agent::Request`]s; the handler never runs anything as root itself.
//! - **Security fragments come from the store**: `create` and `apply_security` read the
//!   account's effective security policy (its template, or `host.security_profile`, with its
//!   per-account overrides; [`store::AccountSecurity`]) when the step runs, not from the job's
//!   payload, so a retried or late job writes what the store says now and the host cannot end
//!   up behind the record. `apply_security` is how `POST /api/accounts/{id}/security-policy`
//!   reaches the host: the same queue, worker and host access as every other account action.
//! - **Addon domains and databases hold the package's limits twice.** The API refuses at the
//!   limit before it enqueues (409 `limit_reached`); the job counts again where it writes
//!   (the store's transaction for a domain, a named lock on the database server for a
//!   database), because two requests may pass the API's check together. A job refused there
//!   fails permanently with nothing created. A domain's zone and the account's mail policy
//!   (which maps every domain's mailbox logins to the account: primary and addon) follow the
//!   store's row; `terminate` removes the addon domains' zones and rows too, so the names are
//!   free again.
//! - **Audit**: the job's own completion is recorded by the archiver (`provision_succeeded`,
//!   `provision_failed`); the routes that enqueue it record who asked.

use crate::{JobContext, JobError};
use agent::{AgentError, Reply, Request};
use futures::future::BoxFuture;
use queue::{Provision, ProvisionAction};
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::sync::Arc;
use store::{
    Account, AccountStatus, DatabaseError, DomainError, HostedDatabases, Limits, SecurityPolicy,
    Store, StoreError,
};

/// What provisioning needs from the host: one typed agent request at a time.
pub trait HostOps: Send + Sync + 'static {
    /// Carry out `req`.
    fn call(&self, req: Request) -> BoxFuture<'_, Result<Reply, AgentError>>;
}

/// Provisioning settings.
#[derive(Clone, Debug)]
pub struct ProvisionConfig {
    /// The address zone files point the account's domain at.
    pub ipv4: Ipv4Addr,
    /// Security template of accounts that chose none (`host.security_profile`).
    pub security_profile: SecurityPolicy,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        ProvisionConfig {
            ipv4: Ipv4Addr::LOCALHOST,
            security_profile: SecurityPolicy::Strict,
        }
    }
}

/// The handler's dependencies.
pub struct Provisioner {
    store: Store,
    host: Arc<dyn HostOps>,
    cfg: ProvisionConfig,
    /// The accounts' database server (`databases.url`); `None`: `create_database` fails,
    /// saying so.
    databases: Option<HostedDatabases>,
}

impl Provisioner {
    /// A provisioner over `store` and `host`, without a database server.
    pub fn new(store: Store, host: Arc<dyn HostOps>, cfg: ProvisionConfig) -> Arc<Provisioner> {
        Provisioner::with_databases(store, host, cfg, None)
    }

    /// A provisioner that also creates the accounts' databases on `databases`
    /// (`databases.url`; see [`HostedDatabases::new`]).
    pub fn with_databases(
        store: Store,
        host: Arc<dyn HostOps>,
        cfg: ProvisionConfig,
        databases: Option<HostedDatabases>,
    ) -> Arc<Provisioner> {
        Arc::new(Provisioner {
            store,
            host,
            cfg,
            databases,
        })
    }
}

pub(crate) fn store_err(e: StoreError) -> JobError {
    match e {
        StoreError::Unavailable(m) => JobError::Transient(m),
        StoreError::NotFound(m) => JobError::Permanent(m),
        other => JobError::Permanent(other.to_string()),
    }
}

pub(crate) fn host_err(op: &str, e: AgentError) -> JobError {
    use agent::ErrorCode as C;
    let msg = format!("host step {op} failed: {e}");
    match e.code() {
        C::InvalidRequest
        | C::InvalidAccount
        | C::UnsafePath
        | C::NotPermitted
        | C::ConfigRejected => JobError::Permanent(msg),
        _ => JobError::Transient(msg),
    }
}

/// The agent's cgroup limits from a package's limits (unset = the agent's defaults).
fn limits_patch(l: &Limits) -> Value {
    let mut p = serde_json::Map::new();
    if let Some(c) = l.cpu_percent {
        p.insert(
            "cpu_max".into(),
            json!({"quota_us": c.saturating_mul(1000), "period_us": 100_000}),
        );
    }
    if let Some(m) = l.memory_mb {
        p.insert("memory_max".into(), json!(m.saturating_mul(1024 * 1024)));
    }
    if let Some(io) = l.io_mbps {
        let bps = io.saturating_mul(1024 * 1024);
        p.insert("io_rbps".into(), json!(bps));
        p.insert("io_wbps".into(), json!(bps));
    }
    if let Some(n) = l.pids {
        p.insert("pids_max".into(), json!(n));
    }
    Value::Object(p)
}

/// A host request from its JSON form, with its op name for messages.
fn request(v: Value) -> Result<(String, Request), JobError> {
    let op = v["op"].as_str().unwrap_or("?").to_string();
    let req = serde_json::from_value(v)
        .map_err(|e| JobError::Permanent(format!("host step {op}: invalid request: {e}")))?;
    Ok((op, req))
}

/// One job's walk through its steps.
struct Run<'a> {
    ctx: &'a JobContext,
    p: &'a Provisioner,
    total: u64,
    done: u64,
}

impl<'a> Run<'a> {
    fn new(ctx: &'a JobContext, p: &'a Provisioner, total: u64) -> Self {
        Run {
            ctx,
            p,
            total,
            done: 0,
        }
    }

    /// Run one host request as the next step; returns the reply as JSON.
    async fn host(&mut self, stage: &str, req: Value) -> Result<Value, JobError> {
        self.host_or(stage, req, &[]).await
    }

    /// [`Run::host`], where an answer with one of the `tolerated` error codes (say, no cgroup
    /// for an account whose host was rebuilt) is logged and the job goes on.
    async fn host_or(
        &mut self,
        stage: &str,
        req: Value,
        tolerated: &[agent::ErrorCode],
    ) -> Result<Value, JobError> {
        self.ctx.progress(stage, self.done, self.total);
        let (op, req) = request(req)?;
        let v = match self.p.host.call(req).await {
            Ok(reply) => serde_json::to_value(&reply).unwrap_or(Value::Null),
            Err(e) if tolerated.contains(&e.code()) => {
                self.ctx.log(format!("{op}: {e} (continuing)"));
                Value::Null
            }
            Err(e) => return Err(host_err(&op, e)),
        };
        if v["type"] == "skipped" || v["status"] == "skipped" {
            self.ctx.log(format!(
                "{op}: skipped on this host: {}",
                v["reason"].as_str().unwrap_or("no reason given")
            ));
        } else if !v.is_null() {
            self.ctx.log(format!("{op}: done"));
        }
        self.done += 1;
        self.ctx.progress(stage, self.done, self.total);
        Ok(v)
    }

    /// A store step.
    fn step(&mut self, stage: &str) {
        self.ctx.progress(stage, self.done, self.total);
        self.done += 1;
    }
}

/// Freeze, thaw, kill and remove need the account's cgroup; an account whose cgroup is gone
/// (a rebuilt host) or a host without cgroups is still handled by its other steps.
const NO_CGROUP: &[agent::ErrorCode] = &[agent::ErrorCode::NotFound, agent::ErrorCode::Unsupported];

async fn account(p: &Provisioner, id: &str) -> Result<Account, JobError> {
    p.store.account(id).await.map_err(|e| match e {
        StoreError::NotFound(_) => JobError::Permanent(format!(
            "account {id} is not recorded in the store; create it through POST /api/accounts or WHMCS"
        )),
        e => store_err(e),
    })
}

/// An account that may still be changed (not terminated).
async fn live_account(p: &Provisioner, id: &str) -> Result<Account, JobError> {
    let a = account(p, id).await?;
    if a.status == AccountStatus::Terminated {
        return Err(JobError::Permanent(format!(
            "account {} is terminated",
            a.id
        )));
    }
    Ok(a)
}

async fn package_limits(p: &Provisioner, a: &Account) -> Result<Limits, JobError> {
    match &a.package {
        Some(id) => Ok(p.store.package(id).await.map_err(store_err)?.limits),
        None => Ok(Limits::default()),
    }
}

/// The `write_security` request of `a`: its effective policy's template and host-side values
/// (the password rules stay in the panel; `cron` has its own field).
pub async fn security_request(
    store: &Store,
    host_default: SecurityPolicy,
    account: &str,
) -> Result<Value, JobError> {
    let eff = store
        .account_security(account)
        .await
        .map_err(store_err)?
        .effective(host_default);
    Ok(
        json!({"op": "write_security", "account": account, "profile": eff.policy,
        "cron": eff.settings.cron, "settings": host_settings(&eff.settings)}),
    )
}

/// The settings the agent writes into files (`write_security`'s `settings`).
fn host_settings(s: &store::SecuritySettings) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.retain(|k, _| !k.starts_with("password_") && k != "cron");
    }
    v
}

/// Run one `provision` job.
pub async fn run(ctx: JobContext, p: Arc<Provisioner>) -> Result<Value, JobError> {
    let job: Provision = ctx.payload()?;
    match job.action {
        ProvisionAction::ReapplyPackage => reapply(&ctx, &p, &job).await,
        _ if job.account.is_empty() => {
            Err(JobError::Permanent("the payload names no account".into()))
        }
        ProvisionAction::Create => create(&ctx, &p, &job).await,
        ProvisionAction::Suspend => suspend(&ctx, &p, &job).await,
        ProvisionAction::Unsuspend => unsuspend(&ctx, &p, &job).await,
        ProvisionAction::ChangePackage => change_package(&ctx, &p, &job).await,
        ProvisionAction::Terminate => terminate(&ctx, &p, &job).await,
        ProvisionAction::ChangePassword => change_password(&ctx, &p, &job).await,
        ProvisionAction::ApplySecurity => apply_security(&ctx, &p, &job).await,
        ProvisionAction::ApplyEmailPolicy => apply_email_policy(&ctx, &p, &job).await,
        ProvisionAction::AddDomain => add_domain(&ctx, &p, &job).await,
        ProvisionAction::RemoveDomain => remove_domain(&ctx, &p, &job).await,
        ProvisionAction::CreateDatabase => create_database(&ctx, &p, &job).await,
    }
}

pub(crate) async fn create(
    ctx: &JobContext,
    p: &Provisioner,
    job: &Provision,
) -> Result<Value, JobError> {
    let a = account(p, &job.account).await?;
    match a.status {
        AccountStatus::Terminated => {
            return Err(JobError::Permanent(format!(
                "account {} was terminated; it cannot be created again under that name",
                a.id
            )))
        }
        AccountStatus::Active | AccountStatus::Suspended => {
            ctx.log("the account already exists; checking every step again");
        }
        AccountStatus::Pending => {}
    }
    let limits = package_limits(p, &a).await?;
    let domain = a.domain.clone().or_else(|| job.domain.clone());
    let mut r = Run::new(
        ctx,
        p,
        7 + u64::from(domain.is_some()) * 2 + u64::from(job.password.is_some()),
    );
    let user = r
        .host(
            "system_user",
            json!({"op": "create_user", "account": a.id, "home_layout": true}),
        )
        .await?;
    let (uid, gid) = (user["uid"].as_u64(), user["gid"].as_u64());
    let (Some(uid), Some(gid)) = (uid, gid) else {
        return Err(JobError::Permanent(format!(
            "the host answered create_user without ids: {user}"
        )));
    };
    p.store
        .set_account_host(&a.id, uid as i64, gid as i64)
        .await
        .map_err(store_err)?;
    if let Some(d) = &domain {
        r.host(
            "home",
            json!({"op": "build_home", "account": a.id, "uid": uid, "gid": gid, "domain": d}),
        )
        .await?;
        r.host(
            "dns",
            json!({"op": "write_zone", "account": a.id, "domain": d, "ipv4": p.cfg.ipv4}),
        )
        .await?;
    }
    r.host(
        "limits",
        json!({"op": "apply_limits", "account": a.id, "limits": limits_patch(&limits)}),
    )
    .await?;
    let quota = r
        .host(
            "quota",
            json!({"op": "set_quota", "account": a.id, "disk_mb": limits.disk_mb}),
        )
        .await?;
    let security = security_request(&p.store, p.cfg.security_profile, &a.id).await?;
    r.host("security", security).await?;
    let mail = email_policy_request(&p.store, &a, None).await?;
    r.host("mail_policy", mail).await?;
    if let Some(pw) = &job.password {
        r.host(
            "password",
            json!({"op": "set_password", "account": a.id, "password": pw}),
        )
        .await?;
    }
    // A re-run on a suspended account keeps it suspended.
    let suspended = a.status == AccountStatus::Suspended;
    r.host(
        "finalize",
        json!({"op": "set_suspended", "account": a.id, "suspended": suspended}),
    )
    .await?;
    r.step("finalize");
    if a.status == AccountStatus::Pending {
        p.store
            .set_account_status(&a.id, AccountStatus::Active, None)
            .await
            .map_err(store_err)?;
    }
    ctx.progress("finalize", r.total, r.total);
    let domain_s = domain.clone().unwrap_or_default();
    Ok(json!({
        "account_id": a.id,
        "credentials": {"username": a.id, "domain": domain, "uid": uid, "gid": gid},
        "package": a.package,
        "limits": limits,
        "disk_quota": quota["status"],
        "next_steps": [
            format!("Point the domain's name servers or an A record at {}", p.cfg.ipv4),
            format!("Upload the site into public_html/ of {}", if domain_s.is_empty() { a.id.clone() } else { domain_s }),
            "Set up mailboxes and databases in the panel".to_string(),
        ],
    }))
}

async fn suspend(ctx: &JobContext, p: &Provisioner, job: &Provision) -> Result<Value, JobError> {
    let a = live_account(p, &job.account).await?;
    let mut r = Run::new(ctx, p, 4);
    r.host_or(
        "freeze",
        json!({"op": "freeze", "account": a.id}),
        NO_CGROUP,
    )
    .await?;
    r.host("login", json!({"op": "lock_user", "account": a.id}))
        .await?;
    r.host(
        "web_and_mail",
        json!({"op": "set_suspended", "account": a.id, "suspended": true}),
    )
    .await?;
    r.step("record");
    let a = if a.status == AccountStatus::Suspended {
        a
    } else {
        p.store
            .set_account_status(&a.id, AccountStatus::Suspended, job.reason.as_deref())
            .await
            .map_err(store_err)?
    };
    Ok(json!({"account_id": a.id, "status": "suspended",
        "suspended_at": a.suspended_at, "reason": a.suspend_reason}))
}

async fn unsuspend(ctx: &JobContext, p: &Provisioner, job: &Provision) -> Result<Value, JobError> {
    let a = live_account(p, &job.account).await?;
    let mut r = Run::new(ctx, p, 4);
    r.host(
        "web_and_mail",
        json!({"op": "set_suspended", "account": a.id, "suspended": false}),
    )
    .await?;
    r.host("login", json!({"op": "unlock_user", "account": a.id}))
        .await?;
    r.host_or("thaw", json!({"op": "thaw", "account": a.id}), NO_CGROUP)
        .await?;
    r.step("record");
    if a.status == AccountStatus::Suspended {
        p.store
            .set_account_status(&a.id, AccountStatus::Active, None)
            .await
            .map_err(store_err)?;
    }
    Ok(json!({"account_id": a.id, "status": "active"}))
}

async fn change_package(
    ctx: &JobContext,
    p: &Provisioner,
    job: &Provision,
) -> Result<Value, JobError> {
    let a = live_account(p, &job.account).await?;
    let pkg = job
        .package
        .clone()
        .ok_or_else(|| JobError::Permanent("change_package needs a package".into()))?;
    let limits = p.store.package(&pkg).await.map_err(store_err)?.limits;
    let mut r = Run::new(ctx, p, 4);
    r.host(
        "limits",
        json!({"op": "apply_limits", "account": a.id, "limits": limits_patch(&limits)}),
    )
    .await?;
    r.host(
        "quota",
        json!({"op": "set_quota", "account": a.id, "disk_mb": limits.disk_mb}),
    )
    .await?;
    // The new package's email limits, under the account's own overrides.
    let mail = email_policy_request(&p.store, &a, Some(&limits)).await?;
    r.host("mail_policy", mail).await?;
    r.step("record");
    p.store
        .set_account_package(&a.id, &pkg)
        .await
        .map_err(store_err)?;
    Ok(json!({"account_id": a.id, "package": pkg, "old_package": a.package, "new_limits": limits}))
}

async fn change_password(
    ctx: &JobContext,
    p: &Provisioner,
    job: &Provision,
) -> Result<Value, JobError> {
    let a = live_account(p, &job.account).await?;
    let pw = job
        .password
        .as_deref()
        .ok_or_else(|| JobError::Permanent("change_password needs a password".into()))?;
    let mut r = Run::new(ctx, p, 1);
    r.host(
        "password",
        json!({"op": "set_password", "account": a.id, "password": pw}),
    )
    .await?;
    Ok(json!({"account_id": a.id, "password_changed": true}))
}

async fn apply_security(
    ctx: &JobContext,
    p: &Provisioner,
    job: &Provision,
) -> Result<Value, JobError> {
    let a = live_account(p, &job.account).await?;
    // A pending account gets its fragments too: harmless before its create job (which writes
    // them again from the same record), and right if that job is past its security step.
    let req = security_request(&p.store, p.cfg.security_profile, &a.id).await?;
    let policy = req["profile"].clone();
    let mut r = Run::new(ctx, p, 1);
    let written = r.host("security", req).await?;
    Ok(
        json!({"account_id": a.id, "policy": policy, "changed": written["changed"],
        "files": written["files"]}),
    )
}

/// The `write_mail_policy` request of `a`: its effective email policy (defaults < package <
/// its override; `package` instead of its current package's limits when it is moving to
/// another), the mailbox logins of all its domains (primary and addon, the store's
/// [`Store::all_domains`]) counted as its own.
pub async fn email_policy_request(
    store: &Store,
    a: &Account,
    package: Option<&Limits>,
) -> Result<Value, JobError> {
    let ov = store
        .email_policy_override(&a.id)
        .await
        .map_err(store_err)?;
    let eff = store::effective_email_policy(package.or(a.limits.as_ref()), &ov).map_err(|p| {
        JobError::Permanent(format!(
            "the email policy of account {} does not hold: {}",
            a.id,
            p.join("; ")
        ))
    })?;
    let mut domains = store.all_domains(&a.id).await.map_err(store_err)?;
    if let Some(d) = a.domain.as_ref().map(|d| d.to_ascii_lowercase()) {
        // The account as the caller has it (a create whose row is being written).
        if !domains.contains(&d) {
            domains.insert(0, d);
        }
    }
    Ok(
        json!({"op": "write_mail_policy", "account": a.id, "policy": eff.policy,
        "domains": domains}),
    )
}

async fn apply_email_policy(
    ctx: &JobContext,
    p: &Provisioner,
    job: &Provision,
) -> Result<Value, JobError> {
    let a = live_account(p, &job.account).await?;
    let req = email_policy_request(&p.store, &a, None).await?;
    let policy = req["policy"].clone();
    let mut r = Run::new(ctx, p, 1);
    let written = r.host("mail_policy", req).await?;
    Ok(
        json!({"account_id": a.id, "policy": policy, "changed": written["changed"],
        "validated": written["validated"], "validation": written["validation"],
        "reloaded": written["reloaded"], "reload": written["reload"]}),
    )
}

async fn terminate(ctx: &JobContext, p: &Provisioner, job: &Provision) -> Result<Value, JobError> {
    let a = account(p, &job.account).await?;
    if a.status == AccountStatus::Terminated {
        ctx.log("already terminated");
        return Ok(
            json!({"account_id": a.id, "status": "terminated", "backup_location": Value::Null}),
        );
    }
    let extra = p.store.account_domains(&a.id).await.map_err(store_err)?;
    let mut r = Run::new(ctx, p, 9 + extra.len() as u64);
    r.host_or(
        "processes",
        json!({"op": "kill", "account": a.id}),
        NO_CGROUP,
    )
    .await?;
    r.host("login", json!({"op": "lock_user", "account": a.id}))
        .await?;
    // The backup comes before anything is removed; a retry makes a new one (the home is
    // still whole until remove_home below succeeded).
    let manifest = json!({"account": a.id, "package": a.package, "domain": a.domain,
        "reason": job.reason, "job_id": ctx.id, "created_by": "npanel provision/terminate"});
    let backup = r
        .host(
            "backup",
            json!({"op": "backup_home", "account": a.id, "manifest": manifest}),
        )
        .await?;
    let location = backup["path"].clone();
    if let Some(d) = &a.domain {
        r.host(
            "dns",
            json!({"op": "remove_zone", "domain": d, "account": a.id}),
        )
        .await?;
    }
    for d in &extra {
        r.host(
            "dns",
            json!({"op": "remove_zone", "domain": d.domain, "account": a.id}),
        )
        .await?;
    }
    r.host(
        "mail_policy",
        json!({"op": "remove_mail_policy", "account": a.id}),
    )
    .await?;
    r.host_or(
        "limits",
        json!({"op": "remove", "account": a.id}),
        NO_CGROUP,
    )
    .await?;
    r.host("system_user", json!({"op": "delete_user", "account": a.id}))
        .await?;
    r.host("home", json!({"op": "remove_home", "account": a.id}))
        .await?;
    r.step("record");
    // The addon domains are free for others again (before the status: a terminated account
    // is not terminated twice, so this would not run again).
    for d in &extra {
        p.store
            .remove_account_domain(&a.id, &d.domain)
            .await
            .map_err(store_err)?;
    }
    p.store
        .set_account_status(&a.id, AccountStatus::Terminated, job.reason.as_deref())
        .await
        .map_err(store_err)?;
    Ok(
        json!({"account_id": a.id, "status": "terminated", "backup_location": location,
        "backup_bytes": backup["bytes"],
        "domains_removed": extra.iter().map(|d| d.domain.as_str()).collect::<Vec<_>>()}),
    )
}

fn domain_err(e: DomainError) -> JobError {
    match e {
        DomainError::Store(e) => store_err(e),
        e => JobError::Permanent(e.to_string()),
    }
}

/// The payload's domain, validated.
fn job_domain(job: &Provision) -> Result<String, JobError> {
    let d = job
        .domain
        .as_deref()
        .ok_or_else(|| JobError::Permanent(format!("{:?} needs a domain", job.action)))?;
    store::normalize_domain(d).map_err(|e| JobError::Permanent(e.to_string()))
}

/// `add_domain`: the store's row (within the package's `addon_domains`), the zone, the mail
/// policy with the new domain's mailbox logins. A retry finds each step done and goes on.
async fn add_domain(ctx: &JobContext, p: &Provisioner, job: &Provision) -> Result<Value, JobError> {
    let a = live_account(p, &job.account).await?;
    let domain = job_domain(job)?;
    let limit = package_limits(p, &a).await?.addon_domains;
    let mut r = Run::new(ctx, p, 3);
    r.step("record");
    let row = p
        .store
        .add_addon_domain(&a.id, &domain, limit)
        .await
        .map_err(domain_err)?;
    let zone = r
        .host(
            "dns",
            json!({"op": "write_zone", "account": a.id, "domain": domain, "ipv4": p.cfg.ipv4}),
        )
        .await?;
    let mail = email_policy_request(&p.store, &a, None).await?;
    let domains = mail["domains"].clone();
    r.host("mail_policy", mail).await?;
    ctx.progress("mail_policy", r.total, r.total);
    Ok(
        json!({"account_id": a.id, "domain": domain, "kind": row.kind,
        "zone": zone["path"], "domains": domains, "addon_domain_limit": limit}),
    )
}

/// `remove_domain`: the zone (only if written for this account), the row, the mail policy
/// without the domain. A retry after the row went still finishes the other steps.
async fn remove_domain(
    ctx: &JobContext,
    p: &Provisioner,
    job: &Provision,
) -> Result<Value, JobError> {
    let a = account(p, &job.account).await?;
    let domain = job_domain(job)?;
    if a.domain.as_deref().map(str::to_ascii_lowercase) == Some(domain.clone()) {
        return Err(JobError::Permanent(format!(
            "{domain} is the primary domain of account {}; only addon domains are removed this way",
            a.id
        )));
    }
    let mut r = Run::new(ctx, p, 3);
    r.host(
        "dns",
        json!({"op": "remove_zone", "domain": domain, "account": a.id}),
    )
    .await?;
    r.step("record");
    let removed = p
        .store
        .remove_account_domain(&a.id, &domain)
        .await
        .map_err(store_err)?;
    let mut domains = Value::Null;
    if a.status != AccountStatus::Terminated {
        let mail = email_policy_request(&p.store, &a, None).await?;
        domains = mail["domains"].clone();
        r.host("mail_policy", mail).await?;
    }
    ctx.progress("mail_policy", r.total, r.total);
    Ok(json!({"account_id": a.id, "domain": domain, "removed": removed, "domains": domains}))
}

/// `create_database`: `<account>_<name>` on the database server, within the package's
/// `databases` (counted again under the server's per-account lock).
async fn create_database(
    ctx: &JobContext,
    p: &Provisioner,
    job: &Provision,
) -> Result<Value, JobError> {
    let a = live_account(p, &job.account).await?;
    let name = job
        .database
        .as_deref()
        .ok_or_else(|| JobError::Permanent("create_database needs a database name".into()))?;
    let Some(dbs) = &p.databases else {
        return Err(JobError::Permanent(
            "databases are not configured on this server (set databases.url to a mysql:// URL)"
                .into(),
        ));
    };
    let limit = package_limits(p, &a).await?.databases;
    ctx.progress("database", 0, 1);
    let made = dbs.create(&a.id, name, limit).await.map_err(|e| match e {
        DatabaseError::Unavailable(m) => JobError::Transient(m),
        e => JobError::Permanent(e.to_string()),
    })?;
    ctx.log(if made.created {
        format!("created database {}", made.name)
    } else {
        format!("database {} exists already", made.name)
    });
    ctx.progress("database", 1, 1);
    Ok(
        json!({"account_id": a.id, "database": made.name, "created": made.created,
        "database_limit": limit}),
    )
}

async fn reapply(ctx: &JobContext, p: &Provisioner, job: &Provision) -> Result<Value, JobError> {
    let pkg_id = job
        .package
        .clone()
        .ok_or_else(|| JobError::Permanent("reapply_package needs a package".into()))?;
    let pkg = p.store.package(&pkg_id).await.map_err(store_err)?;
    if job.package_version.is_some_and(|v| v < pkg.version) {
        ctx.log(format!(
            "package {pkg_id} is at version {} now (this job was for {}); applying the current one",
            pkg.version,
            job.package_version.unwrap_or_default()
        ));
    }
    let total = p
        .store
        .package_usage(&pkg_id)
        .await
        .map_err(store_err)?
        .max(0) as u64;
    let patch = limits_patch(&pkg.limits);
    let (mut done, mut failed) = (0u64, Vec::new());
    let mut after: Option<String> = None;
    loop {
        let page = p
            .store
            .accounts_on_package(&pkg_id, after.as_deref(), 200)
            .await
            .map_err(store_err)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for a in &page {
            ctx.progress("accounts", done, total.max(done + 1));
            let mut reqs = vec![
                json!({"op": "apply_limits", "account": a.id, "limits": patch}),
                json!({"op": "set_quota", "account": a.id, "disk_mb": pkg.limits.disk_mb}),
            ];
            match email_policy_request(&p.store, a, Some(&pkg.limits)).await {
                Ok(req) => reqs.push(req),
                Err(e) => {
                    ctx.log(format!("{}: write_mail_policy: {e}", a.id));
                    failed.push(
                        json!({"account": a.id, "step": "write_mail_policy", "error": e.to_string()}),
                    );
                }
            }
            for req in reqs {
                let (op, req) = request(req)?;
                if let Err(e) = p.host.call(req).await {
                    // One account's trouble does not stop the others; it is reported.
                    ctx.log(format!("{}: {op} failed: {e}", a.id));
                    failed.push(json!({"account": a.id, "step": op, "error": e.to_string()}));
                }
            }
            done += 1;
        }
    }
    ctx.progress("accounts", done, done.max(1));
    if !failed.is_empty() && failed.len() as u64 == done {
        return Err(JobError::Transient(format!(
            "package {pkg_id}: every account failed ({} of {done}); first: {}",
            failed.len(),
            failed[0]
        )));
    }
    Ok(
        json!({"package": pkg_id, "version": pkg.version, "accounts": done,
        "failed": failed, "new_limits": pkg.limits}),
    )
}

impl HostOps for agent::Host {
    fn call(&self, req: Request) -> BoxFuture<'_, Result<Reply, AgentError>> {
        // The inherent method: over the socket, or in-process.
        Box::pin(agent::Host::call(self, req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store validates addon domains itself (the API has no agent); it must take exactly
    /// what the agent's `Domain` takes, or a row would be written for a zone the host refuses.
    #[test]
    fn store_domains_are_the_agents() {
        for d in [
            "example.com",
            "Shop.Example",
            "a-b.example",
            "xn--bcher-kva.example",
            "",
            "localhost",
            ".example",
            "a..example",
            "-a.example",
            "a-.example",
            "a_b.example",
            "1.2.3.4",
            "a.example.",
            "a.b.c.d.e.f.example",
            "ex ample.com",
            "exämple.com",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            format!("{}.example", "a".repeat(63)),
            format!("{}.example", "a".repeat(64)),
            format!("{}.ex", "a.".repeat(125)),
            format!("{}.ex", "a.".repeat(126)),
        ]) {
            let store = store::normalize_domain(&d).ok();
            let agent = agent::Domain::parse(&d)
                .ok()
                .map(|x| x.as_str().to_string());
            assert_eq!(store, agent, "{d:?}");
        }
    }

    /// The store's templates (what the panel shows and sends) and the agent's (what it writes
    /// for a caller that sends no settings) are the same values.
    #[test]
    fn store_templates_match_the_agents() {
        for p in SecurityPolicy::ALL {
            let profile: agent::SecurityProfile = serde_json::from_value(json!(p)).unwrap();
            let settings: agent::hostfiles::SecuritySettings =
                serde_json::from_value(host_settings(&p.template())).unwrap();
            let sent =
                agent::hostfiles::ResolvedSecurity::resolve(profile, Some(&settings)).unwrap();
            assert_eq!(
                sent,
                agent::hostfiles::ResolvedSecurity::template(profile),
                "{p:?}"
            );
        }
    }
}
