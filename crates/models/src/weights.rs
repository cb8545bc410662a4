//! Strict loading of safetensors weights into a [`VarStore`] by parameter name.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Tensor, nn::VarStore};

use crate::ModelError;

/// Copy every tensor of the safetensors file at `path` into the variable of the same name in
/// `vs`, converting dtype and device. Fails, naming the tensor and file, if a variable has no
/// tensor, a tensor has no variable, or shapes differ; `vs` is left unchanged on failure.
pub fn load_safetensors(vs: &mut VarStore, path: &Path) -> Result<(), ModelError> {
    std::fs::metadata(path).map_err(|error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let file: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| ModelError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .into_iter()
        .collect();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    for (name, var) in &vars {
        let Some(tensor) = file.get(name) else {
            return Err(ModelError::MissingTensor {
                path: path.to_path_buf(),
                name: name.clone(),
                expected: var.size(),
            });
        };
        if tensor.size() != var.size() {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                name: name.clone(),
                found: tensor.size(),
                expected: var.size(),
            });
        }
    }
    if let Some((name, tensor)) = file.iter().find(|(name, _)| !vars.contains_key(*name)) {
        return Err(ModelError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: name.clone(),
            shape: tensor.size(),
        });
    }
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vars {
        var.f_copy_(&file[&name])
            .map_err(|e| ModelError::from(e).in_file(path))?;
    }
    Ok(())
}
