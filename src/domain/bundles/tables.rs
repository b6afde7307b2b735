//! The bundles domain's tables: their definitions, records and reads.

use crate::kernel::store::StoreError;
use crate::kernel::store::read::{corrupt, rerr};
use redb::{ReadTransaction, ReadableTable, TableDefinition};

/// Projection: installed bundles by name → version, kind, digest, signer.
pub const BUNDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("bundles");
/// Projection: installed plugins by name → `{digest, entrypoint, unsigned}` JSON.
pub const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");

/// Installed plugins: name → record JSON.
pub fn plugins(txn: &ReadTransaction) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
    let table = txn.open_table(PLUGINS).map_err(rerr)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        out.push((
            k.value().to_owned(),
            serde_json::from_slice(v.value()).map_err(|e| corrupt("plugins", k.value(), e))?,
        ));
    }
    Ok(out)
}

/// Installed plugins as specs see them: name and step kinds (the name when none recorded).
pub fn installed_plugins(txn: &ReadTransaction) -> Result<Vec<crate::domain::runs::spec::InstalledPlugin>, StoreError> {
    Ok(plugins(txn)?
        .into_iter()
        .map(|(name, rec)| {
            let kinds: Vec<String> =
                rec["kinds"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(str::to_owned)).collect();
            let kinds = if kinds.is_empty() { vec![name.clone()] } else { kinds };
            (name, kinds)
        })
        .collect())
}

pub fn bundles(txn: &ReadTransaction) -> Result<Vec<serde_json::Value>, StoreError> {
    let table = txn.open_table(BUNDLES).map_err(rerr)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt("bundles", k.value(), e))?);
    }
    Ok(out)
}

/// Why a run may not use `plugin` (pinned at `digest`) or `dag`: a quarantined bundle.
pub fn quarantine_reason(
    txn: &redb::WriteTransaction,
    dag: &str,
    plugins: &[(String, String)],
) -> Result<Option<String>, crate::kernel::CommandError> {
    let t = txn.open_table(BUNDLES).map_err(crate::kernel::storage)?;
    for row in t.iter().map_err(crate::kernel::storage)? {
        let (_, v) = row.map_err(crate::kernel::storage)?;
        let b: serde_json::Value = serde_json::from_slice(v.value()).map_err(crate::kernel::storage)?;
        let Some(reason) = b["quarantined"].as_str() else { continue };
        let carries_dag = b["dags"].as_array().is_some_and(|d| d.iter().any(|x| x == dag));
        let carries_plugin = plugins.iter().any(|(_, digest)| b["digest"].as_str() == Some(digest.as_str()));
        if carries_dag || carries_plugin {
            return Ok(Some(format!("bundle {} is quarantined: {reason}", b["name"].as_str().unwrap_or("?"))));
        }
    }
    Ok(None)
}
