//! `npanel accounts list | show`: the accounts the caller may see (DESIGN §10), read through
//! `GET /api/accounts` (keyset pages, followed with `--all`) and `GET /api/accounts/{id}`.

use super::client::{encode, Api};
use super::{print_json, s, with_query};
use anyhow::bail;

/// `npanel accounts list`: one page of at most `limit` (the API's default 100), or with `all`
/// every page (`limit` is then the page size).
pub async fn list(
    api: &Api,
    reseller: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    all: bool,
) -> anyhow::Result<()> {
    let mut cursor: Option<String> = None;
    loop {
        let path = with_query(
            "/api/accounts",
            &[
                ("reseller", reseller.clone()),
                ("status", status.clone()),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor.clone()),
            ],
        );
        let v = api.call("GET", &path, None).await?;
        if cursor.is_none() {
            println!(
                "{:<16} {:<8} {:<10} {:<14} {:<16} {:<28} created",
                "id", "type", "status", "package", "reseller", "domain"
            );
        }
        for a in v["accounts"].as_array().into_iter().flatten() {
            println!(
                "{:<16} {:<8} {:<10} {:<14} {:<16} {:<28} {}",
                s(&a["id"]),
                s(&a["type"]),
                s(&a["status"]),
                s(&a["package"]),
                s(&a["reseller"]),
                s(&a["domain"]),
                s(&a["created_at"]),
            );
        }
        match v["next_cursor"].as_str() {
            None => return Ok(()),
            Some(_) if !all => {
                eprintln!("(more accounts: use --all, or a larger --limit up to 1000)");
                return Ok(());
            }
            Some(c) if cursor.as_deref() == Some(c) => {
                bail!("the API returned the same page cursor twice; stopping")
            }
            Some(c) => cursor = Some(c.to_string()),
        }
    }
}

/// `npanel accounts show <id>`: the account as JSON.
pub async fn show(api: &Api, id: &str) -> anyhow::Result<()> {
    print_json(
        &api.call("GET", &format!("/api/accounts/{}", encode(id)), None)
            .await?,
    );
    Ok(())
}
