//! Transcoding with bounded concurrency: at most `concurrency` jobs run at
//! once per replica (images on blocking threads, audio and video as ffmpeg
//! processes), each under a timeout.

pub mod ffmpeg;
pub mod image;
pub mod sniff;

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::error::MediaError;
use crate::formats::MediaType;
use ffmpeg::{AvOutput, Ffmpeg, FfmpegConfig, FfmpegSetupError};
use image::{ImageOutput, ImageTarget};

/// Cache-key tags of the ffmpeg targets (change one when its settings
/// change, so old results are not reused).
pub const VOICE_TAG: &str = "voice-opus-32k-mono-v1";
pub const VIDEO_TAG: &str = "video-h264-crf26-720p-aac96k-v1";
pub const GIF_TAG: &str = "gif-h264-crf26-720p-v1";

/// Operator settings of transcoding.
#[derive(Debug, Clone)]
pub struct TranscodeSettings {
    /// Jobs running at once per replica (each ffmpeg job uses one thread).
    pub concurrency: usize,
    /// Time limit of one image job.
    pub image_timeout: Duration,
    /// Time limit of one ffmpeg job (voice, video, GIF).
    pub av_timeout: Duration,
    pub ffmpeg: FfmpegConfig,
}

impl Default for TranscodeSettings {
    fn default() -> Self {
        Self {
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            image_timeout: Duration::from_secs(30),
            av_timeout: Duration::from_secs(480),
            ffmpeg: FfmpegConfig::default(),
        }
    }
}

/// The object name of a transcoded result: derived from the source's
/// SHA-256 and the target, so the same source converted the same way is
/// stored (and transcoded) once. It does not reveal the source's hash.
pub fn output_id(source_sha256: &[u8; 32], target_tag: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"interop-media-output\0");
    h.update(source_sha256);
    h.update(b"\0");
    h.update(target_tag.as_bytes());
    format!("x-{}", hex::encode(&h.finalize()[..16]))
}

/// Runs transcoding jobs.
#[derive(Clone)]
pub struct Transcoder {
    permits: Arc<Semaphore>,
    ffmpeg: Ffmpeg,
    settings: TranscodeSettings,
}

impl Transcoder {
    pub fn new(settings: TranscodeSettings) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            ffmpeg: Ffmpeg::new(settings.ffmpeg.clone()),
            settings,
        }
    }

    pub fn settings(&self) -> &TranscodeSettings {
        &self.settings
    }

    /// Checks that ffmpeg is usable (at start-up).
    pub async fn check(&self) -> Result<(), FfmpegSetupError> {
        self.ffmpeg.check().await
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, MediaError> {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| MediaError::Unavailable("transcoder closed".into()))
    }

    /// An image job on a blocking thread. The permit is held until the
    /// thread is done, even after a timeout.
    pub async fn image(
        &self,
        data: Arc<Vec<u8>>,
        declared: MediaType,
        target: ImageTarget,
    ) -> Result<ImageOutput, MediaError> {
        let permit = self.permit().await?;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            image::transcode_image(&data, &declared, &target)
        });
        let limit = self.settings.image_timeout;
        match tokio::time::timeout(limit, task).await {
            Err(_) => Err(MediaError::Timeout {
                kind: "image",
                limit,
            }),
            Ok(Err(e)) if e.is_panic() => Err(MediaError::Invalid(
                "the image could not be decoded (the decoder failed)".into(),
            )),
            Ok(Err(e)) => Err(MediaError::Unavailable(format!("image task: {e}"))),
            Ok(Ok(r)) => r,
        }
    }

    pub async fn voice(&self, data: &[u8], declared: &MediaType) -> Result<AvOutput, MediaError> {
        let _permit = self.permit().await?;
        self.ffmpeg
            .voice(data, declared, self.settings.av_timeout)
            .await
    }

    pub async fn video(&self, data: &[u8], declared: &MediaType) -> Result<AvOutput, MediaError> {
        let _permit = self.permit().await?;
        self.ffmpeg
            .video(data, declared, self.settings.av_timeout)
            .await
    }

    pub async fn gif(&self, data: &[u8], declared: &MediaType) -> Result<AvOutput, MediaError> {
        let _permit = self.permit().await?;
        self.ffmpeg
            .gif(data, declared, self.settings.av_timeout)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_ids_depend_on_source_and_target() {
        let a = output_id(&[1; 32], "img-jpeg");
        assert_eq!(a, output_id(&[1; 32], "img-jpeg"));
        assert_ne!(a, output_id(&[2; 32], "img-jpeg"));
        assert_ne!(a, output_id(&[1; 32], "img-webp"));
        assert!(a.starts_with("x-") && a.len() == 34);
        assert!(!a.contains(&hex::encode([1u8; 32])[..8]));
    }
}
