//! Registry pulls (guide §2): not wired yet.

use super::client::Client;

pub async fn pull(_c: &Client, name: &str) -> Result<String, super::images::ImageError> {
    Err(super::images::ImageError::Pull {
        image: name.to_string(),
        reason: "registry pulls are not implemented yet; import the image tar into <data-dir>/agent/images".into(),
    })
}
