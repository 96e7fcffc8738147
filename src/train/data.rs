//! The data a run trains and evaluates on.

use super::TrainConfig;
use crate::data::{open_data, Format, ImageDataset, Subset};
use crate::{bail, Result};
use std::path::Path;
use std::sync::Arc;
/// The training and test (or validation) data, opened (and sliced by the limits).
pub struct Data {
    /// The training images (shared with the loader threads).
    pub train: Arc<dyn ImageDataset>,
    /// The test or validation images.
    pub test: Arc<dyn ImageDataset>,
    /// What the user should know about the data: where validation images came from, files skipped, caching.
    pub notes: Vec<String>,
    /// The format found.
    pub format: Format,
}

impl Data {
    /// Opens both splits from `dir` as the config says (IDX checksums verified when `verify`; folder images
    /// cached up to `cache_mb`), applying the config's limits.
    pub fn load(dir: &Path, verify: bool, config: &TrainConfig, cache_mb: usize) -> Result<Data> {
        let splits = open_data(dir, &config.data_options(verify, cache_mb)?)?;
        let limit = |ds: Arc<dyn ImageDataset>, n: Option<usize>| -> Arc<dyn ImageDataset> {
            match n {
                Some(n) => Arc::new(Subset::first(ds, n)),
                None => ds,
            }
        };
        Ok(Data {
            train: limit(splits.train, config.data.limit_train),
            test: limit(splits.test, config.data.limit_test),
            notes: splits.notes,
            format: splits.format,
        })
    }

    /// Checks that the data fits a run's configuration: its channels and its classes.
    pub fn check_fits(&self, config: &TrainConfig) -> Result<()> {
        let c = self.train.channels();
        if c != config.model.in_channels {
            bail!(
                "the data has {c} channels, the run was started on {} (pass the same --channels)",
                config.model.in_channels
            );
        }
        let classes = self.train.classes().len();
        if classes != config.num_classes() {
            bail!(
                "the data has {classes} classes, the run was started on {}",
                config.num_classes()
            );
        }
        Ok(())
    }
}
