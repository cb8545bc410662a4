//! Images given on the command line (`--cond-image FILE_OR_DIR`): the low-resolution input of
//! a super-resolution stage, the conditioning image of an image-to-image model, or the clean
//! images a cold-diffusion run starts from.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::SamplingError;
use difflab_data::{list_images, load_image};

/// Read one image file, or every image under a folder (sorted by path), as `[N, C, r, r]` in
/// [−1, 1]: each resized (shorter side) and centre-cropped to `resolution`, like training data.
pub fn load_input_images(
    path: &Path,
    resolution: i64,
    channels: i64,
) -> Result<Tensor, SamplingError> {
    let files: Vec<PathBuf> = if path.is_dir() {
        list_images(path)?
            .into_iter()
            .map(|rel| path.join(rel))
            .collect()
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(SamplingError::invalid(format!(
            "--cond-image {}: no such file or folder",
            path.display()
        )));
    };
    if files.is_empty() {
        return Err(SamplingError::invalid(format!(
            "--cond-image {}: the folder has no png/jpg images",
            path.display()
        )));
    }
    let images = files
        .iter()
        .map(|f| {
            let data = load_image(f, resolution as usize, channels as usize)?;
            Ok(Tensor::from_slice(&data).reshape([channels, resolution, resolution]))
        })
        .collect::<Result<Vec<_>, SamplingError>>()?;
    Ok(Tensor::stack(&images, 0))
}
