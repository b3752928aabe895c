//! Resumable iterative edits. FT-L (an Adam step over every edit prompt) and DAMA (one layer at a
//! time) take an hour or more on full data on a CPU, so a stopped run resumes from its last
//! finished step instead of from the start.
//!
//! After each step the method writes its state (tensors and a JSON record) atomically to
//! `<cache>/checkpoints/<method>-<fingerprint>.safetensors`. The fingerprint hashes everything
//! that determines that state (model, prompts, layers, hyperparameters, device and numeric
//! backend), so a changed input never resumes a stale run. The file is removed once the caller
//! has stored the finished edit (`EditOutcome::release_checkpoint`): a crash in between resumes
//! from the finished state. A resumed run gives the same edit, bit for bit, as one that was not
//! stopped.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bump when a method's checkpointed state changes meaning.
const VERSION: u32 = 1;

/// Where one edit's state lives between steps; inert without a cache folder.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: Option<PathBuf>,
    fingerprint: String,
}

/// A state read back: the method's JSON record and its tensors by name.
pub struct Saved<S> {
    pub state: S,
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// The checkpoint of `method` for the run described by `identity` (everything its state
    /// depends on) on `device`, under `cache_dir/checkpoints`; `None` disables checkpoints.
    pub fn new(
        cache_dir: Option<&Path>,
        method: &str,
        device: &Device,
        identity: &impl Serialize,
    ) -> Result<Self> {
        let keyed = serde_json::json!({
            "version": VERSION,
            "method": method,
            // Bits differ between devices and between the default and MKL builds.
            "device": format!("{:?}", device.location()),
            "mkl": cfg!(feature = "mkl"),
            "identity": identity,
        });
        let fingerprint = crate::io::sha256_bytes(&serde_json::to_vec(&keyed)?);
        let path = cache_dir.map(|d| {
            d.join("checkpoints")
                .join(format!("{method}-{}.safetensors", &fingerprint[..16]))
        });
        Ok(Checkpoint { path, fingerprint })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The saved state, if a checkpoint of this very run exists. A file that cannot be read is
    /// an error naming it (it is never silently restarted over), so the user can remove it.
    pub fn load<S: DeserializeOwned>(&self, device: &Device) -> Result<Option<Saved<S>>> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        if !path.exists() {
            return Ok(None);
        }
        let bad = |why: String| {
            Error::file(
                path,
                format!("{why}; remove this checkpoint to start the edit from the beginning"),
            )
        };
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, e.to_string()))?;
        let (st, meta, entries) = crate::io::biaslens_safetensors(path, &bytes)?;
        if entries.get("fingerprint") != Some(&self.fingerprint) {
            return Err(bad("the checkpoint belongs to another run".into()));
        }
        let state: S =
            serde_json::from_str(&meta).map_err(|e| bad(format!("bad checkpoint state: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!("tensor `{name}` is not f32")));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let t = Tensor::from_vec(data, view.shape(), device)?;
            tensors.insert(name, t);
        }
        Ok(Some(Saved { state, tensors }))
    }

    /// Write the state after a finished step (atomically: a crash leaves the previous one).
    pub fn save<S: Serialize>(&self, state: &S, tensors: &[(String, &Tensor)]) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let header = HashMap::from([
            ("biaslens".to_string(), serde_json::to_string(state)?),
            ("fingerprint".to_string(), self.fingerprint.clone()),
        ]);
        let owned: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), (*t).clone()))
            .collect();
        let bytes = crate::model::safetensors_bytes::tensors_to_bytes(&owned, &header)
            .map_err(|e| Error::file(path, e))?;
        crate::io::write_atomic(path, &bytes)
    }

    /// The edit is stored: its checkpoint is no longer needed.
    pub fn finish(&self) -> Result<()> {
        match &self.path {
            Some(p) if p.exists() => {
                std::fs::remove_file(p).map_err(|e| Error::file(p, e.to_string()))
            }
            _ => Ok(()),
        }
    }
}

/// What a prompt contributes to a fingerprint: its token ids and its subject's last token.
pub fn prompt_identity(prompts: &[super::context::EditPrompt]) -> String {
    let mut bytes = Vec::new();
    for p in prompts {
        bytes.extend((p.ids.len() as u64).to_le_bytes());
        bytes.extend(p.ids.iter().flat_map(|i| i.to_le_bytes()));
        bytes.extend((p.last_subject_token as u64).to_le_bytes());
    }
    crate::io::sha256_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        next: usize,
        hist: Vec<f64>,
    }

    /// A saved state comes back exactly (f64 history and f32 tensors), only for the same run,
    /// and is gone after `finish`.
    #[test]
    fn state_round_trips_for_its_own_run_only() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let ck = Checkpoint::new(Some(dir.path()), "ft-l", &dev, &("model", 3)).unwrap();
        assert!(ck.load::<State>(&dev).unwrap().is_none());
        let t = Tensor::new(&[[0.1f32, -3.5e-8], [f32::MAX, 7.0]], &dev).unwrap();
        let state = State {
            next: 4,
            hist: vec![0.1 + 0.2, 1.0 / 3.0],
        };
        ck.save(&state, &[("w.3".into(), &t)]).unwrap();
        let back = ck.load::<State>(&dev).unwrap().unwrap();
        assert_eq!(back.state, state);
        assert_eq!(
            back.tensors["w.3"].to_vec2::<f32>().unwrap(),
            t.to_vec2::<f32>().unwrap()
        );
        // Another run (other identity) has another file and sees nothing.
        let other = Checkpoint::new(Some(dir.path()), "ft-l", &dev, &("model", 4)).unwrap();
        assert_ne!(other.path(), ck.path());
        assert!(other.load::<State>(&dev).unwrap().is_none());
        // A file that claims the name but not the fingerprint is refused, naming the file.
        std::fs::copy(ck.path().unwrap(), other.path().unwrap()).unwrap();
        let err = other.load::<State>(&dev).err().unwrap().to_string();
        assert!(
            err.contains("another run") && err.contains("checkpoints/ft-l-"),
            "{err}"
        );
        ck.finish().unwrap();
        assert!(!ck.path().unwrap().exists());
        assert!(ck.load::<State>(&dev).unwrap().is_none());
        // Without a cache folder nothing is written.
        let off = Checkpoint::new(None, "ft-l", &dev, &("model", 3)).unwrap();
        off.save(&state, &[]).unwrap();
        assert!(off.load::<State>(&dev).unwrap().is_none());
    }
}
