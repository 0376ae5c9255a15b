//! `npanel packages list | show | activate | deprecate | import` (DESIGN §10).
//!
//! `import DIR` parses every `*.yaml` / `*.yml` file in DIR (sorted by name) here, with the
//! store's own parser ([`store::parse_package_yaml`]), so a YAML mistake is reported with its
//! file and line before anything is sent; each package is then created through
//! `POST /api/packages` (as a draft) and, with `--activate`, activated. A package that already
//! exists is reported as such and skipped, so importing the same directory twice is harmless.
//! One file's failure does not stop the others; the exit status says whether any failed.

use super::client::{encode, Api, ApiError};
use super::{print_json, s};
use anyhow::{bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `10240` → `10 GB`, `null` → `unlimited`.
fn mb(v: &Value) -> String {
    match v.as_u64() {
        None => "unlimited".into(),
        Some(n) if n >= 1024 && n.is_multiple_of(1024) => format!("{} GB", n / 1024),
        Some(n) => format!("{n} MB"),
    }
}

/// `npanel packages list`: every package the caller may read, by id.
pub async fn list(api: &Api) -> anyhow::Result<()> {
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/packages?limit=1000".to_string(),
            Some(c) => format!("/api/packages?limit=1000&cursor={}", encode(c)),
        };
        let v = api.call("GET", &path, None).await?;
        if cursor.is_none() {
            println!(
                "{:<20} {:<20} {:>3} {:<10} {:<12} {:>10} {:>10} {:>10} updated",
                "id", "name", "ver", "status", "owner", "disk", "bandwidth", "memory"
            );
        }
        for p in v["packages"].as_array().into_iter().flatten() {
            let l = &p["limits"];
            println!(
                "{:<20} {:<20} {:>3} {:<10} {:<12} {:>10} {:>10} {:>10} {}",
                s(&p["id"]),
                s(&p["name"]),
                s(&p["version"]),
                s(&p["status"]),
                if p["owner"].is_null() {
                    "(global)".to_string()
                } else {
                    s(&p["owner"])
                },
                mb(&l["disk_mb"]),
                mb(&l["bandwidth_mb"]),
                mb(&l["memory_mb"]),
                s(&p["updated_at"]),
            );
        }
        match v["next_cursor"].as_str() {
            None => return Ok(()),
            Some(c) if cursor.as_deref() == Some(c) => {
                bail!("the API returned the same page cursor twice; stopping")
            }
            Some(c) => cursor = Some(c.to_string()),
        }
    }
}

/// `npanel packages show <id>`: the package as JSON.
pub async fn show(api: &Api, id: &str) -> anyhow::Result<()> {
    print_json(
        &api.call("GET", &format!("/api/packages/{}", encode(id)), None)
            .await?,
    );
    Ok(())
}

/// `npanel packages activate|deprecate <id>` (`action` is the route's last segment).
pub async fn set_status(api: &Api, id: &str, action: &str) -> anyhow::Result<()> {
    let v = api
        .call(
            "POST",
            &format!("/api/packages/{}/{action}", encode(id)),
            None,
        )
        .await?;
    println!(
        "package {}: {} (version {})",
        s(&v["id"]),
        s(&v["status"]),
        s(&v["version"])
    );
    Ok(())
}

/// What became of one imported file.
enum Imported {
    Created { id: String, activated: bool },
    Exists { id: String, status: String },
}

/// The `*.yaml` / `*.yml` files directly in `dir`, sorted by name.
fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = e
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        let yaml = path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| x == "yaml" || x == "yml");
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{} has no *.yaml or *.yml files", dir.display());
    }
    Ok(files)
}

async fn import_one(api: &Api, path: &Path, activate: bool) -> anyhow::Result<Imported> {
    let text = std::fs::read_to_string(path).context("cannot read it")?;
    let pkg = store::parse_package_yaml(&text)?;
    let id = pkg.id.clone();
    let body = serde_json::to_value(&pkg)?;
    match api.call("POST", "/api/packages", Some(body)).await {
        Ok(_) => {}
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.code == "conflict") =>
        {
            // Conflict also means "too many packages": it exists only if we can read it.
            let path = format!("/api/packages/{}", encode(&id));
            return match api.call("GET", &path, None).await {
                Ok(p) => Ok(Imported::Exists {
                    id,
                    status: s(&p["status"]),
                }),
                Err(_) => Err(e),
            };
        }
        Err(e) => return Err(e),
    }
    if activate {
        api.call(
            "POST",
            &format!("/api/packages/{}/activate", encode(&id)),
            None,
        )
        .await
        .with_context(|| format!("{id} was created as a draft but not activated"))?;
    }
    Ok(Imported::Created {
        id,
        activated: activate,
    })
}

/// `npanel packages import DIR [--activate]`; `Ok(false)` when any file failed.
pub async fn import(api: &Api, dir: &Path, activate: bool) -> anyhow::Result<bool> {
    let (mut created, mut existing, mut failed) = (0, 0, 0);
    for path in yaml_files(dir)? {
        let name = path.display();
        match import_one(api, &path, activate).await {
            Ok(Imported::Created { id, activated }) => {
                created += 1;
                let how = if activated {
                    "created and activated"
                } else {
                    "created (draft)"
                };
                println!("{name}: {id} {how}");
            }
            Ok(Imported::Exists { id, status }) => {
                existing += 1;
                println!("{name}: {id} exists ({status}), skipped");
            }
            Err(e) => {
                failed += 1;
                eprintln!("{name}: failed: {e:#}");
            }
        }
    }
    println!("{created} created, {existing} existing, {failed} failed");
    Ok(failed == 0)
}
