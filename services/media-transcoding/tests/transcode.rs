//! Each conversion and each kind of bad input, without servers: the
//! transcoder on fixtures made at run time.

mod common;

use std::io::Cursor;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::metadata::Orientation;
use image::{ImageDecoder, ImageFormat, ImageReader};

use common::*;
use interop_media_transcoding::formats::MediaType;
use interop_media_transcoding::transcode::image::{probe_dimensions, transcode_image, ImageTarget};
use interop_media_transcoding::transcode::{TranscodeSettings, Transcoder};
use interop_media_transcoding::MediaError;

fn t(s: &str) -> MediaType {
    MediaType::parse(s).unwrap()
}

fn transcoder() -> Transcoder {
    Transcoder::new(TranscodeSettings {
        concurrency: 2,
        ..TranscodeSettings::default()
    })
}

/// ffprobe's JSON about `data`.
fn ffprobe(data: &[u8]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    std::fs::write(&path, data).unwrap();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe failed on the output");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn decoder(data: &[u8], format: ImageFormat) -> impl ImageDecoder + '_ {
    ImageReader::with_format(Cursor::new(data), format)
        .into_decoder()
        .unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_jpeg_photo_is_rotated_resized_to_1600_px_and_loses_its_exif_and_gps() {
    let input = jpeg_with_exif(2000, 1000);
    // The fixture really carries EXIF with GPS and an orientation.
    let mut d = decoder(&input, ImageFormat::Jpeg);
    assert!(d
        .exif_metadata()
        .unwrap()
        .is_some_and(|e| contains(&e, EXIF_MAKE)));
    assert_eq!(d.orientation().unwrap(), Orientation::Rotate90);
    assert!(contains(&input, &gps_rationals()), "the GPS position");

    let out = transcode_image(&input, &t("image/jpeg"), &ImageTarget::PHOTO_JPEG).unwrap();
    let img = &out.image;
    assert_eq!(img.content_type, "image/jpeg");
    // Rotated upright (1000x2000), then the long edge capped at 1600.
    assert_eq!((img.width, img.height), (800, 1600));
    assert_eq!(image::guess_format(&img.bytes).unwrap(), ImageFormat::Jpeg);
    let mut d = decoder(&img.bytes, ImageFormat::Jpeg);
    assert_eq!(d.dimensions(), (800, 1600));
    assert_eq!(d.exif_metadata().unwrap(), None, "EXIF is gone");
    assert_eq!(d.orientation().unwrap(), Orientation::NoTransforms);
    assert!(!contains(&img.bytes, b"Exif\0\0"));
    assert!(!contains(&img.bytes, EXIF_MAKE));
    assert!(
        !contains(&img.bytes, &gps_rationals()[..8]),
        "the GPS position is gone"
    );

    // The thumbnail: 320 px long edge, also clean.
    let th = &out.thumbnail;
    assert_eq!(
        (th.width, th.height, th.content_type),
        (160, 320, "image/jpeg")
    );
    assert_eq!(
        decoder(&th.bytes, ImageFormat::Jpeg).dimensions(),
        (160, 320)
    );
    assert!(!contains(&th.bytes, EXIF_MAKE));
}

#[test]
fn a_png_with_transparency_becomes_a_jpeg_on_white_or_a_lossless_webp() {
    let input = png(400, 300, true);
    let jpeg = transcode_image(&input, &t("image/png"), &ImageTarget::PHOTO_JPEG).unwrap();
    assert_eq!((jpeg.image.width, jpeg.image.height), (400, 300));
    let pixels = image::load_from_memory(&jpeg.image.bytes)
        .unwrap()
        .to_rgb8();
    // Fully transparent on the left: white.
    assert!(
        pixels.get_pixel(0, 150).0.iter().all(|&c| c > 240),
        "{:?}",
        pixels.get_pixel(0, 150)
    );

    let webp = transcode_image(&input, &t("image/png"), &ImageTarget::PHOTO_WEBP).unwrap();
    assert_eq!(webp.image.content_type, "image/webp");
    assert_eq!(
        image::guess_format(&webp.image.bytes).unwrap(),
        ImageFormat::WebP
    );
    let back = image::load_from_memory(&webp.image.bytes).unwrap();
    assert!(back.color().has_alpha());
    assert_eq!(
        back.to_rgba8().get_pixel(0, 0).0[3],
        0,
        "lossless keeps transparency"
    );
    assert_eq!(webp.thumbnail.content_type, "image/webp");
}

#[test]
fn a_sticker_becomes_a_webp_of_at_most_512_px() {
    let input = png(1024, 768, true);
    let out = transcode_image(&input, &t("image/png"), &ImageTarget::STICKER_WEBP).unwrap();
    assert_eq!(out.image.content_type, "image/webp");
    assert_eq!((out.image.width, out.image.height), (512, 384));
    assert_eq!((out.thumbnail.width, out.thumbnail.height), (128, 96));
}

#[tokio::test]
async fn a_voice_note_becomes_opus_in_ogg_without_its_metadata() {
    let input = voice_m4a("3");
    let out = transcoder().voice(&input, &t("audio/mp4")).await.unwrap();
    assert_eq!(out.content_type, "audio/ogg");
    assert!(
        (2900..=3100).contains(&out.duration_ms),
        "{}",
        out.duration_ms
    );
    assert!(out.poster.is_none());
    let p = ffprobe(&out.bytes);
    assert_eq!(p["format"]["format_name"], "ogg");
    assert_eq!(p["streams"][0]["codec_name"], "opus");
    assert_eq!(p["streams"][0]["channels"], 1);
    assert!(!contains(&out.bytes, b"secret-artist"));
}

#[tokio::test]
async fn a_1080p_video_becomes_720p_h264_and_aac_in_mp4_with_a_poster_frame() {
    let input = video_1080p("1");
    assert!(contains(&input, b"secret-title"));
    let out = transcoder().video(&input, &t("video/mp4")).await.unwrap();
    assert_eq!(
        (out.content_type, out.width, out.height),
        ("video/mp4", 1280, 720)
    );
    assert!(
        (900..=1100).contains(&out.duration_ms),
        "{}",
        out.duration_ms
    );
    let p = ffprobe(&out.bytes);
    let streams = p["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(1280), Some(720))
    );
    assert_eq!(video["pix_fmt"], "yuv420p");
    let audio = streams.iter().find(|s| s["codec_type"] == "audio").unwrap();
    assert_eq!(audio["codec_name"], "aac");
    assert!(
        !contains(&out.bytes, b"secret-title"),
        "metadata is dropped"
    );
    // faststart: the index comes before the media data.
    let moov = out.bytes.windows(4).position(|w| w == b"moov").unwrap();
    let mdat = out.bytes.windows(4).position(|w| w == b"mdat").unwrap();
    assert!(moov < mdat);
    let poster = out.poster.expect("a poster frame");
    assert_eq!(
        (poster.content_type, poster.width, poster.height),
        ("image/jpeg", 1280, 720)
    );
    assert_eq!(
        decoder(&poster.bytes, ImageFormat::Jpeg).dimensions(),
        (1280, 720)
    );
}

#[tokio::test]
async fn an_animated_gif_becomes_a_silent_mp4() {
    let input = animated_gif();
    let out = transcoder().gif(&input, &t("image/gif")).await.unwrap();
    assert_eq!(
        (out.content_type, out.width, out.height),
        ("video/mp4", 160, 120)
    );
    let p = ffprobe(&out.bytes);
    let streams = p["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "no audio");
    assert_eq!(streams[0]["codec_name"], "h264");
    assert!(out.poster.is_some());
}

// ------------------------------------------------------------ bad media

fn invalid(r: Result<impl std::fmt::Debug, MediaError>) -> String {
    match r {
        Err(MediaError::Invalid(d)) => d,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn too_large(r: Result<impl std::fmt::Debug, MediaError>) -> String {
    match r {
        Err(MediaError::TooLarge(d)) => d,
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn a_corrupt_image_fails_with_a_detail() {
    let mut input = png(64, 64, false);
    let n = input.len();
    for b in &mut input[40..n - 12] {
        *b ^= 0x5A;
    }
    let d = invalid(transcode_image(
        &input,
        &t("image/png"),
        &ImageTarget::PHOTO_JPEG,
    ));
    assert!(d.contains("corrupt") || d.contains("header"), "{d}");
}

#[test]
fn a_truncated_image_fails() {
    let input = png(300, 200, false);
    let cut = &input[..input.len() / 2];
    let d = invalid(transcode_image(
        cut,
        &t("image/png"),
        &ImageTarget::PHOTO_JPEG,
    ));
    assert!(d.contains("corrupt or truncated"), "{d}");
}

#[tokio::test]
async fn a_truncated_video_fails() {
    let input = video_1080p("1");
    let cut = &input[..input.len() / 2];
    let d = invalid(transcoder().video(cut, &t("video/mp4")).await);
    assert!(d.contains("cannot decode the video"), "{d}");
}

#[tokio::test]
async fn mislabeled_media_fails_and_says_what_it_really_is() {
    let input = png(32, 32, false);
    let d = invalid(transcoder().video(&input, &t("video/mp4")).await);
    assert_eq!(d, "declared video/mp4 but the content is a PNG image");
    let d = invalid(transcode_image(
        &input,
        &t("image/jpeg"),
        &ImageTarget::PHOTO_JPEG,
    ));
    assert_eq!(d, "declared image/jpeg but the content is a PNG image");
    let d = invalid(
        transcoder()
            .voice(&photo_jpeg(16, 16), &t("audio/ogg"))
            .await,
    );
    assert_eq!(d, "declared audio/ogg but the content is a JPEG image");
}

#[tokio::test]
async fn zero_length_media_fails() {
    let d = invalid(transcode_image(
        &[],
        &t("image/jpeg"),
        &ImageTarget::PHOTO_JPEG,
    ));
    assert!(d.contains("empty"), "{d}");
    let d = invalid(transcoder().video(&[], &t("video/mp4")).await);
    assert!(d.contains("empty"), "{d}");
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header_without_decoding() {
    let bomb = png_bomb();
    assert!(bomb.len() < 100);
    let started = Instant::now();
    let d = too_large(transcode_image(
        &bomb,
        &t("image/png"),
        &ImageTarget::PHOTO_JPEG,
    ));
    assert!(d.contains("100000x100000"), "{d}");
    assert!(d.contains("40 megapixels"), "{d}");
    let d = too_large(probe_dimensions(&bomb, &t("image/png")));
    assert!(d.contains("100000x100000"), "{d}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn over_long_voice_notes_and_videos_are_refused_before_decoding() {
    let d = too_large(transcoder().voice(&long_voice_wav(), &t("audio/wav")).await);
    assert!(d.contains("901 s") && d.contains("15 minutes"), "{d}");
    let d = too_large(transcoder().video(&long_video(), &t("video/mp4")).await);
    assert!(d.contains("301 s") && d.contains("5 minutes"), "{d}");
}

#[tokio::test]
async fn a_transcode_over_its_time_limit_is_killed_and_reported() {
    let input = video_1080p("1");
    let tr = Transcoder::new(TranscodeSettings {
        concurrency: 1,
        av_timeout: Duration::from_millis(100),
        ..TranscodeSettings::default()
    });
    let started = Instant::now();
    let r = tr.video(&input, &t("video/mp4")).await;
    assert!(
        matches!(r, Err(MediaError::Timeout { kind: "video", .. })),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The slot was released: the next job runs.
    let ok = Transcoder::new(TranscodeSettings::default())
        .gif(&animated_gif(), &t("image/gif"))
        .await;
    assert!(ok.is_ok());
}

#[test]
fn image_headers_are_read_from_the_first_bytes() {
    let input = photo_jpeg(640, 480);
    assert_eq!(
        probe_dimensions(&input[..2048.min(input.len())], &t("image/jpeg")).unwrap(),
        (640, 480)
    );
    let p = png(300, 200, false);
    assert_eq!(
        probe_dimensions(&p[..64], &t("image/png")).unwrap(),
        (300, 200)
    );
}

#[tokio::test]
async fn image_jobs_share_the_bounded_slots() {
    let tr = Transcoder::new(TranscodeSettings {
        concurrency: 1,
        ..TranscodeSettings::default()
    });
    let data = Arc::new(photo_jpeg(400, 300));
    let (a, b) = tokio::join!(
        tr.image(data.clone(), t("image/jpeg"), ImageTarget::PHOTO_JPEG),
        tr.image(data, t("image/jpeg"), ImageTarget::PHOTO_JPEG)
    );
    assert_eq!(a.unwrap().image.bytes, b.unwrap().image.bytes);
}
