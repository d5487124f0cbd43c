//! App settings (`<data dir>/settings.json`, written whenever they change) and where the data
//! directory is: `--data-dir`, else `ZHINAO_CHAT_DATA`, else the platform's data directory
//! (`~/.local/share/zhinao-chat`, `~/Library/Application Support/ai.zhinao.zhinao-chat`,
//! `%APPDATA%\zhinao\zhinao-chat\data`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::engine::{GenParams, LoadOptions};
use super::i18n::Lang;
use super::store::write_atomic;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    #[default]
    Dark,
    Light,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub language: Lang,
    pub theme: Theme,
    /// Sampling chosen by the user; `None` = the loaded model's generation_config.json.
    pub sampling: Option<GenParams>,
    /// The model opened last (opened again at start).
    pub model: Option<PathBuf>,
    /// Recently opened model directories, newest first.
    pub recent_models: Vec<PathBuf>,
    /// The conversation shown last.
    pub conversation: Option<String>,
    /// How models are loaded: context length (`None`: the model's) and KV-cache storage.
    pub ctx_len: Option<usize>,
    pub kv_type: crate::engine::KvFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            language: Lang::Zh,
            theme: Theme::Dark,
            sampling: None,
            model: None,
            recent_models: Vec::new(),
            conversation: None,
            ctx_len: None,
            kv_type: Default::default(),
        }
    }
}

impl Settings {
    /// The options the next model load uses.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions { ctx_len: self.ctx_len, kv: self.kv_type }
    }

    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("settings.json")
    }

    /// The saved settings, the defaults when there are none, and a message when the file exists
    /// but cannot be read (it is then left alone until the next change overwrites it).
    pub fn load(data_dir: &Path) -> (Settings, Option<String>) {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Settings::default(), None),
            Err(e) => (Settings::default(), Some(format!("{}: {e}", path.display()))),
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => (s, None),
                Err(e) => (Settings::default(), Some(format!("{}: {e}", path.display()))),
            },
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Input(format!("settings to JSON: {e}")))?;
        write_atomic(&Self::path(data_dir), &bytes)
    }

    /// Remember `dir` as the current and most recent model (at most 8 kept).
    pub fn opened_model(&mut self, dir: &Path) {
        self.model = Some(dir.to_path_buf());
        self.recent_models.retain(|d| d != dir);
        self.recent_models.insert(0, dir.to_path_buf());
        self.recent_models.truncate(8);
    }
}

/// The data directory: `explicit`, else `ZHINAO_CHAT_DATA`, else the platform's.
pub fn data_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    if let Some(d) = std::env::var_os("ZHINAO_CHAT_DATA").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    directories::ProjectDirs::from("ai", "zhinao", "zhinao-chat")
        .map(|p| p.data_dir().to_path_buf())
        .ok_or_else(|| Error::Input("no home directory: pass --data-dir".into()))
}
