//! The gateway's conversions next to plain `ffmpeg` doing the same work:
//! `cargo bench -p interop-media-transcoding --bench transcode`.
//!
//! - image: a 12-megapixel JPEG to a 1600-pixel JPEG plus a 320-pixel
//!   thumbnail (elements/s = images/s);
//! - voice: a 60-second voice note (AAC in M4A) to Opus in Ogg (divide 60 s
//!   by the time for the real-time factor);
//! - video: 10 s of 1080p30 H.264 to 720p H.264/AAC MP4 (elements/s =
//!   frames/s).
//!
//! Fixtures are made with ffmpeg at start-up. docs/benchmarks.md has the
//! results and the exact ffmpeg commands (printed here too).

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use interop_media_transcoding::formats::MediaType;
use interop_media_transcoding::transcode::image::{transcode_image, ImageTarget};
use interop_media_transcoding::transcode::{TranscodeSettings, Transcoder};

fn run_ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-v", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg is installed");
    assert!(status.success(), "ffmpeg {args:?}");
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

fn plain(name: &str, dir: &Path, args: &[&str]) -> Vec<String> {
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if let Some(file) = a.strip_prefix('@') {
                path(dir, file)
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    eprintln!(
        "plain ffmpeg ({name}): ffmpeg -nostdin -hide_banner -v error -y {}",
        args.iter()
            .map(|a| a.replace(&*dir.to_string_lossy(), "."))
            .collect::<Vec<_>>()
            .join(" ")
    );
    args
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = dir.path();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let transcoder = Transcoder::new(TranscodeSettings {
        concurrency: 1,
        ..TranscodeSettings::default()
    });

    // A 12-megapixel "photo": a test pattern with film grain (a plain
    // pattern compresses unrealistically well).
    run_ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=4000x3000,noise=alls=12:allf=t",
        "-frames:v",
        "1",
        "-q:v",
        "3",
        &path(d, "photo.jpg"),
    ]);
    let photo = Arc::new(std::fs::read(d.join("photo.jpg")).expect("the photo"));
    let jpeg = MediaType::parse("image/jpeg").expect("a media type");
    let mut g = c.benchmark_group("image_12mp_jpeg_to_1600_jpeg_and_thumbnail");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("gateway", |b| {
        b.iter(|| transcode_image(black_box(&photo), &jpeg, &ImageTarget::PHOTO_JPEG).expect("ok"))
    });
    let args = plain(
        "image",
        d,
        &[
            "-threads",
            "1",
            "-filter_threads",
            "1",
            "-i",
            "@photo.jpg",
            "-filter_complex",
            "[0:v]scale=1600:-2:flags=lanczos,split=2[a][b];[b]scale=320:-2:flags=lanczos[t]",
            "-map",
            "[a]",
            "-q:v",
            "4",
            "@out.jpg",
            "-map",
            "[t]",
            "-q:v",
            "6",
            "@thumb.jpg",
        ],
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    g.bench_function("plain_ffmpeg", |b| b.iter(|| run_ffmpeg(&refs)));
    g.finish();

    // A 60-second voice note.
    run_ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=16000",
        "-f",
        "lavfi",
        "-i",
        "anoisesrc=amplitude=0.05:sample_rate=16000",
        "-filter_complex",
        "amix=inputs=2",
        "-t",
        "60",
        "-c:a",
        "aac",
        "-b:a",
        "32k",
        &path(d, "voice.m4a"),
    ]);
    let voice = std::fs::read(d.join("voice.m4a")).expect("the voice note");
    let m4a = MediaType::parse("audio/mp4").expect("a media type");
    let mut g = c.benchmark_group("voice_60s_m4a_to_opus");
    g.sample_size(10);
    g.throughput(Throughput::Elements(60));
    g.bench_function("gateway", |b| {
        b.iter(|| {
            rt.block_on(transcoder.voice(black_box(&voice), &m4a))
                .expect("ok")
        })
    });
    let args = plain(
        "voice",
        d,
        &[
            "-threads",
            "1",
            "-i",
            "@voice.m4a",
            "-map",
            "0:a:0",
            "-map_metadata",
            "-1",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-ac",
            "1",
            "-ar",
            "48000",
            "-application",
            "voip",
            "-f",
            "ogg",
            "@voice.ogg",
        ],
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    g.bench_function("plain_ffmpeg", |b| b.iter(|| run_ffmpeg(&refs)));
    g.finish();

    // 10 s of 1080p30 (300 frames).
    run_ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1920x1080:rate=30,noise=alls=8:allf=t",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        "10",
        "-c:v",
        "libx264",
        "-preset",
        "fast",
        "-crf",
        "20",
        "-c:a",
        "aac",
        "-shortest",
        &path(d, "video.mp4"),
    ]);
    let video = std::fs::read(d.join("video.mp4")).expect("the video");
    let mp4 = MediaType::parse("video/mp4").expect("a media type");
    let mut g = c.benchmark_group("video_1080p_to_720p_h264");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(60));
    g.throughput(Throughput::Elements(300));
    g.bench_function("gateway", |b| {
        b.iter(|| {
            rt.block_on(transcoder.video(black_box(&video), &mp4))
                .expect("ok")
        })
    });
    let args = plain(
        "video",
        d,
        &[
            "-threads",
            "1",
            "-filter_threads",
            "1",
            "-i",
            "@video.mp4",
            "-map",
            "0:v:0",
            "-map",
            "0:a:0?",
            "-vf",
            "scale=1280:720,format=yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "26",
            "-threads",
            "1",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
            "-ac",
            "2",
            "-movflags",
            "+faststart",
            "@out.mp4",
        ],
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    g.bench_function("plain_ffmpeg", |b| b.iter(|| run_ffmpeg(&refs)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
