//! Metrics of media-transcoding (`interop_media_transcoding_*`). Labels are
//! fixed sets: a kind, a result, an error code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use interop_telemetry::metrics::Metrics;

/// Kind of media work and its result: kind is one of image, voice, video,
/// gif, sticker, file, e2ee; result one of ok, failed, cached.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TranscodeLabel {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// `ok` or an API error code (lowercase).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to ~9 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// The service's media metrics.
#[derive(Clone)]
pub struct MediaMetrics {
    pub transcodes: Family<TranscodeLabel, Counter>,
    pub transcode_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    pub uploads: Family<ResultLabel, Counter>,
    pub upload_bytes: Counter,
    pub downloads: Family<ResultLabel, Counter>,
    pub download_bytes: Counter,
}

impl MediaMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            transcodes: Family::default(),
            transcode_seconds: Family::new_with_constructor(seconds_histogram),
            uploads: Family::default(),
            upload_bytes: Counter::default(),
            downloads: Family::default(),
            download_bytes: Counter::default(),
        };
        metrics.register(
            "interop_media_transcoding_transcodes",
            "Media processed, by kind and result.",
            m.transcodes.clone(),
        );
        metrics.register(
            "interop_media_transcoding_transcode_seconds",
            "Time to process one piece of media (cached results included), by kind.",
            m.transcode_seconds.clone(),
        );
        metrics.register(
            "interop_media_transcoding_uploads",
            "Uploads, by result (ok or the error code).",
            m.uploads.clone(),
        );
        metrics.register(
            "interop_media_transcoding_upload_bytes",
            "Bytes of media stored by successful uploads.",
            m.upload_bytes.clone(),
        );
        metrics.register(
            "interop_media_transcoding_downloads",
            "Downloads, by result (ok or the error code).",
            m.downloads.clone(),
        );
        metrics.register(
            "interop_media_transcoding_download_bytes",
            "Bytes of media served to recipients.",
            m.download_bytes.clone(),
        );
        m
    }

    pub fn transcoded(&self, kind: &'static str, result: &'static str, seconds: f64) {
        self.transcodes
            .get_or_create(&TranscodeLabel { kind, result })
            .inc();
        self.transcode_seconds
            .get_or_create(&KindLabel { kind })
            .observe(seconds);
    }
}
