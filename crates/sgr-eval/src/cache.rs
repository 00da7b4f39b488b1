//! Per-model results kept on disk (feature `experiment`): a long evaluation over many checkpoints resumes model by
//! model, and a rerun with the same settings and the same checkpoint file reuses each model's result.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{EvalError, Result};

/// FNV-1a (64 bit) of a file's bytes, as hex: identifies a checkpoint's exact parameters.
pub fn file_digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(fnv1a_hex(&bytes))
}

/// FNV-1a (64 bit) of a text, as hex.
pub fn text_digest(text: &str) -> String {
    fnv1a_hex(text.as_bytes())
}

/// FNV-1a (64 bit) of `bytes`, as 16 hex digits.
fn fnv1a_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A folder of results, one JSON file per model: `{"key": …, "result": …, "seconds": …}` (`seconds`: what
/// computing it took, so that a report made from stored results can still say what they cost).
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
    /// Milliseconds of computation behind the results reused so far (shared by clones).
    reused_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ResultCache {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            reused_ms: std::sync::Arc::default(),
        }
    }

    /// The computing time recorded with every result this cache handed out instead of computing it (results
    /// stored without a time count 0).
    pub fn reused_seconds(&self) -> f64 {
        self.reused_ms.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0
    }

    /// Counts `seconds` of stored computation as reused.
    pub fn count_reused(&self, seconds: f64) {
        self.reused_ms.fetch_add(
            (seconds.max(0.0) * 1000.0).round() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", Self::file_stem(name)))
    }

    /// `name` with every character outside `[A-Za-z0-9._-]` replaced by `_`.
    fn file_stem(name: &str) -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// Where a large result beside `name`'s JSON file goes: `DIR/<sub>/<name>-<digest of key>.<ext>` (a new
    /// key gets a new file; [`Self::remove_stale`] drops the old ones).
    pub fn side_path<K: Serialize>(
        &self,
        sub: &str,
        name: &str,
        key: &K,
        ext: &str,
    ) -> Result<PathBuf> {
        let key = serde_json::to_string(key).map_err(|e| EvalError::Invalid(e.to_string()))?;
        Ok(self.dir.join(sub).join(format!(
            "{}-{}.{ext}",
            Self::file_stem(name),
            text_digest(&key)
        )))
    }

    /// Removes the files of `name` in `DIR/<sub>` other than `keep` (made under earlier keys).
    pub fn remove_stale(&self, sub: &str, name: &str, keep: &Path) {
        let prefix = format!("{}-", Self::file_stem(name));
        let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let stale = p != keep
                && p.file_name().and_then(|f| f.to_str()).is_some_and(|f| {
                    f.strip_prefix(&prefix)
                        .is_some_and(|rest| !rest.contains('-'))
                });
            if stale {
                if let Err(err) = std::fs::remove_file(&p) {
                    tracing::warn!("{}: {err}", p.display());
                }
            }
        }
    }

    /// The stored `{"key", "result"}` of `name` whatever its key (to read results of an older layout).
    pub fn stored(&self, name: &str) -> Option<(serde_json::Value, serde_json::Value)> {
        let text = std::fs::read_to_string(self.path(name)).ok()?;
        let mut v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some((v.get_mut("key")?.take(), v.get_mut("result")?.take()))
    }

    /// The stored result of `name` if it was made with `key` (compared as JSON), else `compute()`, stored
    /// atomically before it is returned. A file that does not parse is recomputed, with a warning.
    pub fn get_or_compute<K: Serialize, T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        key: &K,
        compute: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if let Some(r) = self.get(name, key) {
            return Ok(r);
        }
        let t = std::time::Instant::now();
        let result = compute()?;
        self.put(name, key, &result, t.elapsed().as_secs_f64())?;
        Ok(result)
    }

    /// The stored result of `name` if it was made with `key` (compared as JSON), its computing time counted
    /// as reused; a file that does not parse counts as missing, with a warning.
    pub fn get<K: Serialize, T: DeserializeOwned>(&self, name: &str, key: &K) -> Option<T> {
        let (r, seconds) = self.get_timed(name, key)?;
        self.count_reused(seconds);
        Some(r)
    }

    /// [`Self::get`] with the stored computing time (0 if none was stored), counting nothing.
    pub fn get_timed<K: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        key: &K,
    ) -> Option<(T, f64)> {
        let key = serde_json::to_value(key).ok()?;
        let path = self.path(name);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) if v.get("key") == Some(&key) => {
                let r = v
                    .get("result")
                    .and_then(|r| serde_json::from_value(r.clone()).ok());
                if r.is_some() {
                    tracing::info!(name, file = %path.display(), "reusing a stored result");
                }
                let seconds = v.get("seconds").and_then(serde_json::Value::as_f64);
                r.map(|r| (r, seconds.unwrap_or(0.0)))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("{}: {e}; computing it again", path.display());
                None
            }
        }
    }

    /// The stored result made with `key`, whatever model name it was stored under (the first file in name
    /// order whose key matches), with its computing time; counts nothing. For results another command stored
    /// under its own name for the same checkpoint: the key holds the checkpoint's digest.
    pub fn find_timed<K: Serialize, T: DeserializeOwned>(&self, key: &K) -> Option<(T, f64)> {
        let mut stems: Vec<String> = std::fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "json")
                    .then(|| p.file_stem()?.to_str().map(str::to_string))
                    .flatten()
            })
            .collect();
        stems.sort();
        stems.iter().find_map(|stem| self.get_timed(stem, key))
    }

    /// Stores `result` of `name` under `key` with the `seconds` computing it took, atomically.
    pub fn put<K: Serialize, T: Serialize>(
        &self,
        name: &str,
        key: &K,
        result: &T,
        seconds: f64,
    ) -> Result<()> {
        let key = serde_json::to_value(key).map_err(|e| EvalError::Invalid(e.to_string()))?;
        let path = self.path(name);
        std::fs::create_dir_all(&self.dir).map_err(|source| EvalError::Io {
            path: self.dir.display().to_string(),
            source,
        })?;
        let text = serde_json::to_string_pretty(
            &serde_json::json!({"key": key, "result": result, "seconds": seconds}),
        )
        .map_err(|e| EvalError::Invalid(e.to_string()))?;
        sgr_models::fsutil::write_atomic(&path, text.as_bytes()).map_err(|source| EvalError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_reused_only_for_the_same_key() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EvalError::Invalid(e.to_string()))?;
        let cache = ResultCache::new(&dir.path().join("c"));
        let mut calls = 0;
        let mut get = |key: u32, value: f64| {
            cache.get_or_compute("model a/1", &key, || {
                calls += 1;
                Ok(value)
            })
        };
        assert_eq!(get(1, 0.5)?, 0.5);
        assert_eq!(get(1, 0.7)?, 0.5, "same key: the stored result");
        assert_eq!(get(2, 0.7)?, 0.7, "another key: computed again");
        assert_eq!(get(2, 0.9)?, 0.7);
        assert_eq!(calls, 2);
        // A damaged file is recomputed.
        std::fs::write(dir.path().join("c/model_a_1.json"), "{not json")
            .map_err(|e| EvalError::Invalid(e.to_string()))?;
        assert_eq!(cache.get_or_compute("model a/1", &2u32, || Ok(0.3))?, 0.3);
        Ok(())
    }

    #[test]
    fn a_result_is_found_by_key_under_any_name() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EvalError::Invalid(e.to_string()))?;
        let cache = ResultCache::new(dir.path());
        assert_eq!(cache.find_timed::<_, f64>(&1u32), None, "empty folder");
        cache.put("gn-l10-s0", &1u32, &0.25f64, 3.0)?;
        cache.put("other", &2u32, &0.75f64, 4.0)?;
        std::fs::write(dir.path().join("notes.txt"), "x")
            .map_err(|e| EvalError::Invalid(e.to_string()))?;
        assert_eq!(cache.find_timed::<_, f64>(&1u32), Some((0.25, 3.0)));
        assert_eq!(cache.find_timed::<_, f64>(&2u32), Some((0.75, 4.0)));
        assert_eq!(cache.find_timed::<_, f64>(&3u32), None, "no file has key 3");
        assert_eq!(cache.reused_seconds(), 0.0, "find_timed counts nothing");
        Ok(())
    }

    #[test]
    fn a_reused_result_counts_the_time_it_took_to_compute() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EvalError::Invalid(e.to_string()))?;
        let cache = ResultCache::new(dir.path());
        cache.put("m", &1u32, &0.5f64, 12.25)?;
        assert_eq!(cache.reused_seconds(), 0.0, "storing is not reusing");
        assert_eq!(cache.get::<_, f64>("m", &2u32), None);
        assert_eq!(cache.reused_seconds(), 0.0, "a miss reuses nothing");
        assert_eq!(cache.get_timed::<_, f64>("m", &1u32), Some((0.5, 12.25)));
        assert_eq!(cache.reused_seconds(), 0.0, "get_timed counts nothing");
        let shared = cache.clone();
        assert_eq!(shared.get::<_, f64>("m", &1u32), Some(0.5));
        assert_eq!(cache.get_or_compute("m", &1u32, || Ok(0.9))?, 0.5);
        assert_eq!(cache.reused_seconds(), 24.5, "clones share the count");
        // A result stored without a time (an older file) counts 0.
        std::fs::write(dir.path().join("old.json"), r#"{"key": 1, "result": 0.25}"#)
            .map_err(|e| EvalError::Invalid(e.to_string()))?;
        assert_eq!(cache.get::<_, f64>("old", &1u32), Some(0.25));
        assert_eq!(cache.reused_seconds(), 24.5);
        Ok(())
    }

    #[test]
    fn stale_side_files_of_a_name_are_removed_and_other_names_kept() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EvalError::Invalid(e.to_string()))?;
        let cache = ResultCache::new(dir.path());
        let old = cache.side_path("adv", "pgd", &1u32, "bin")?;
        let new = cache.side_path("adv", "pgd", &2u32, "bin")?;
        let other = cache.side_path("adv", "pgd-eps64", &1u32, "bin")?;
        assert_ne!(old, new);
        std::fs::create_dir_all(dir.path().join("adv"))
            .map_err(|e| EvalError::Invalid(e.to_string()))?;
        for p in [&old, &new, &other] {
            std::fs::write(p, "x").map_err(|e| EvalError::Invalid(e.to_string()))?;
        }
        cache.remove_stale("adv", "pgd", &new);
        assert!(!old.exists() && new.exists() && other.exists());
        Ok(())
    }

    #[test]
    fn the_digest_follows_the_bytes() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EvalError::Invalid(e.to_string()))?;
        let p = dir.path().join("f");
        // FNV-1a 64 of the empty input is the offset basis; of "a" a published test vector.
        std::fs::write(&p, "").map_err(|e| EvalError::Invalid(e.to_string()))?;
        assert_eq!(file_digest(&p)?, "cbf29ce484222325");
        std::fs::write(&p, "a").map_err(|e| EvalError::Invalid(e.to_string()))?;
        assert_eq!(file_digest(&p)?, "af63dc4c8601ec8c");
        Ok(())
    }
}
