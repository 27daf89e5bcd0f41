//! Audio and video with the system `ffmpeg` and `ffprobe`, as subprocesses:
//!
//! - inputs are probed first (`ffprobe`): the container must be one of the
//!   kind's demuxers (`-format_whitelist`, so a playlist or concat script
//!   cannot make ffmpeg open other files), and size, frame size and duration
//!   are checked before anything is decoded;
//! - only local files are read (`-protocol_whitelist file`);
//! - each run has a wall-clock timeout (the process is killed), one thread
//!   (`-threads 1`, `-filter_threads 1`), a lower CPU priority (`nice`) and
//!   an address-space limit (`prlimit --as`) where those tools exist;
//! - metadata and chapters are dropped (`-map_metadata -1`).
//!
//! Concurrency is bounded by the caller ([`super::Transcoder`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::error::MediaError;
use crate::formats::{
    MediaType, VIDEO_MAX_DURATION, VIDEO_MAX_PIXELS, VIDEO_MAX_SIDE, VOICE_MAX_DURATION,
};
use crate::transcode::image::Encoded;
use crate::transcode::sniff;

/// Demuxers allowed for voice notes.
const VOICE_DEMUXERS: &str = "ogg,mp3,mov,aac,wav,matroska,flac,amr";
/// Demuxers allowed for video.
const VIDEO_DEMUXERS: &str = "mov,matroska";
/// Demuxers allowed for animated GIFs.
const GIF_DEMUXERS: &str = "gif";
/// Most bytes of ffprobe output read.
const MAX_PROBE_OUTPUT: u64 = 256 * 1024;
/// Most bytes of ffmpeg's error output kept.
const MAX_STDERR: u64 = 16 * 1024;
/// Longest time taking the poster frame may take.
const POSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time ffprobe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Video output box: 720p, landscape or portrait.
const VIDEO_LONG_EDGE: u32 = 1280;
const VIDEO_SHORT_EDGE: u32 = 720;

/// How to run ffmpeg.
#[derive(Debug, Clone)]
pub struct FfmpegConfig {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    /// Address-space limit per process (`prlimit --as`); `None`: no limit.
    pub memory_limit_bytes: Option<u64>,
    /// Where temporary files go.
    pub work_dir: PathBuf,
}

impl Default for FfmpegConfig {
    fn default() -> Self {
        Self {
            ffmpeg: "ffmpeg".into(),
            ffprobe: "ffprobe".into(),
            memory_limit_bytes: Some(2048 * 1024 * 1024),
            work_dir: std::env::temp_dir(),
        }
    }
}

/// ffmpeg is missing or lacks an encoder.
#[derive(Debug, thiserror::Error)]
pub enum FfmpegSetupError {
    #[error("cannot run {program}: {source} (install it: apt-get install -y ffmpeg)")]
    Missing {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} has no {encoder} encoder (Debian's ffmpeg package has it)")]
    NoEncoder { program: String, encoder: String },
    #[error("{program} did not answer within 10 s")]
    TimedOut { program: String },
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs ffmpeg and ffprobe.
#[derive(Debug, Clone)]
pub struct Ffmpeg {
    config: FfmpegConfig,
    nice: Option<PathBuf>,
    prlimit: Option<PathBuf>,
}

/// What ffprobe says about an input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    pub format_name: String,
    pub duration_secs: Option<f64>,
    /// Width and height as displayed (rotation applied).
    pub video: Option<(u32, u32)>,
    pub audio: bool,
}

/// An encoded audio or video result.
#[derive(Debug, Clone)]
pub struct AvOutput {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
    pub duration_ms: u32,
    /// The poster frame (video and GIF).
    pub poster: Option<Encoded>,
}

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    format: Option<ProbeFormat>,
}

#[derive(Deserialize)]
struct ProbeStream {
    codec_type: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    #[serde(default)]
    side_data_list: Vec<SideData>,
    #[serde(default)]
    tags: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct SideData {
    rotation: Option<f64>,
}

#[derive(Deserialize)]
struct ProbeFormat {
    format_name: Option<String>,
    duration: Option<String>,
}

fn parse_probe(json: &[u8]) -> Result<Probe, String> {
    let p: ProbeJson = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let format = p.format.ok_or("no format")?;
    let mut probe = Probe {
        format_name: format.format_name.unwrap_or_default(),
        duration_secs: format
            .duration
            .and_then(|d| d.parse::<f64>().ok())
            .filter(|d| d.is_finite() && *d >= 0.0),
        ..Probe::default()
    };
    for s in p.streams {
        match s.codec_type.as_deref() {
            Some("audio") => probe.audio = true,
            Some("video") if probe.video.is_none() => {
                let (w, h) = (s.width.unwrap_or(0), s.height.unwrap_or(0));
                let rotation = s
                    .side_data_list
                    .iter()
                    .find_map(|d| d.rotation)
                    .or_else(|| s.tags.get("rotate").and_then(|r| r.parse().ok()))
                    .unwrap_or(0.0);
                let quarter = ((rotation / 90.0).round() as i64).rem_euclid(2) == 1;
                probe.video = Some(if quarter { (h, w) } else { (w, h) });
            }
            _ => {}
        }
    }
    Ok(probe)
}

/// Fits `(w, h)` into 1280x720 (or 720x1280 for portrait), even sides.
pub fn fit_720p(w: u32, h: u32) -> (u32, u32) {
    let (bw, bh) = if w >= h {
        (VIDEO_LONG_EDGE, VIDEO_SHORT_EDGE)
    } else {
        (VIDEO_SHORT_EDGE, VIDEO_LONG_EDGE)
    };
    let scale = (f64::from(bw) / f64::from(w.max(1)))
        .min(f64::from(bh) / f64::from(h.max(1)))
        .min(1.0);
    let even = |v: f64| ((v / 2.0).floor() as u32 * 2).max(2);
    (even(f64::from(w) * scale), even(f64::from(h) * scale))
}

fn secs_to_ms(s: f64) -> u32 {
    let ms = (s * 1000.0).round();
    if ms >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        ms as u32
    }
}

/// Reads at most `cap` bytes and discards the rest (so the child never
/// blocks on a full pipe).
async fn read_capped(reader: Option<impl AsyncRead + Unpin>, cap: u64) -> Vec<u8> {
    let Some(reader) = reader else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut limited = reader.take(cap);
    // A read error ends the output early; the exit status tells the rest.
    limited.read_to_end(&mut out).await.ok();
    let mut rest = limited.into_inner();
    tokio::io::copy(&mut rest, &mut tokio::io::sink())
        .await
        .ok();
    out
}

impl Ffmpeg {
    pub fn new(config: FfmpegConfig) -> Self {
        Self {
            config,
            nice: find_in_path("nice"),
            prlimit: find_in_path("prlimit"),
        }
    }

    pub fn config(&self) -> &FfmpegConfig {
        &self.config
    }

    /// Checks that ffmpeg and ffprobe run and that ffmpeg has the encoders
    /// the gateway uses.
    pub async fn check(&self) -> Result<(), FfmpegSetupError> {
        for program in [&self.config.ffmpeg, &self.config.ffprobe] {
            self.capture(program, &["-hide_banner", "-version"]).await?;
        }
        let encoders = self
            .capture(&self.config.ffmpeg, &["-hide_banner", "-encoders"])
            .await?;
        for encoder in ["libx264", "libopus", "aac", "mjpeg"] {
            let found = encoders
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(encoder));
            if !found {
                return Err(FfmpegSetupError::NoEncoder {
                    program: self.config.ffmpeg.display().to_string(),
                    encoder: encoder.into(),
                });
            }
        }
        Ok(())
    }

    async fn capture(&self, program: &Path, args: &[&str]) -> Result<String, FfmpegSetupError> {
        let name = program.display().to_string();
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(10), out).await {
            Err(_) => Err(FfmpegSetupError::TimedOut { program: name }),
            Ok(Err(source)) => Err(FfmpegSetupError::Missing {
                program: name,
                source,
            }),
            Ok(Ok(o)) => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        }
    }

    /// The command line with the resource-limiting wrappers in front.
    fn command(&self, program: &Path, args: Vec<OsString>) -> Command {
        let mut argv: Vec<OsString> = Vec::new();
        if let (Some(prlimit), Some(bytes)) = (&self.prlimit, self.config.memory_limit_bytes) {
            argv.push(prlimit.into());
            argv.push(format!("--as={bytes}").into());
            argv.push("--".into());
        }
        if let Some(nice) = &self.nice {
            argv.push(nice.into());
            argv.push("-n".into());
            argv.push("10".into());
        }
        argv.push(program.into());
        argv.extend(args);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs a program with a timeout; returns its stdout, or the last line
    /// of its error output (temp paths removed) when it fails.
    async fn run(
        &self,
        program: &Path,
        args: Vec<OsString>,
        timeout: Duration,
        kind: &'static str,
        dir: &Path,
    ) -> Result<Vec<u8>, MediaError> {
        let mut child = self.command(program, args).spawn().map_err(|e| {
            MediaError::Unavailable(format!("cannot start {}: {e}", program.display()))
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let work = async {
            let (out, err, status) = tokio::join!(
                read_capped(stdout, MAX_PROBE_OUTPUT),
                read_capped(stderr, MAX_STDERR),
                child.wait()
            );
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                // kill_on_drop also kills it; this reaps it now.
                child.kill().await.ok();
                return Err(MediaError::Timeout {
                    kind,
                    limit: timeout,
                });
            }
        };
        let status = status
            .map_err(|e| MediaError::Unavailable(format!("waiting for ffmpeg failed: {e}")))?;
        if status.success() {
            return Ok(out);
        }
        let text = String::from_utf8_lossy(&err).replace(&*dir.to_string_lossy(), "");
        let line = text
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no error message");
        let line: String = line.chars().take(200).collect();
        Err(MediaError::Invalid(format!(
            "cannot decode the {kind}: {line}"
        )))
    }

    /// Probes `input` with the given demuxers.
    pub async fn probe(
        &self,
        input: &Path,
        demuxers: &str,
        kind: &'static str,
        dir: &Path,
    ) -> Result<Probe, MediaError> {
        let args: Vec<OsString> = vec![
            "-hide_banner".into(),
            "-v".into(),
            "error".into(),
            "-format_whitelist".into(),
            demuxers.into(),
            "-protocol_whitelist".into(),
            "file".into(),
            "-of".into(),
            "json".into(),
            "-show_entries".into(),
            "format=format_name,duration:stream=codec_type,width,height:stream_side_data=rotation:stream_tags=rotate".into(),
            file_url(input),
        ];
        let out = self
            .run(&self.config.ffprobe, args, PROBE_TIMEOUT, kind, dir)
            .await?;
        parse_probe(&out).map_err(|e| MediaError::Invalid(format!("cannot probe the {kind}: {e}")))
    }

    async fn workspace(&self, data: &[u8]) -> Result<(tempfile::TempDir, PathBuf), MediaError> {
        let dir = tempfile::Builder::new()
            .prefix("interop-media-")
            .tempdir_in(&self.config.work_dir)
            .map_err(|e| MediaError::Unavailable(format!("cannot create a temp dir: {e}")))?;
        let input = dir.path().join("in");
        tokio::fs::write(&input, data)
            .await
            .map_err(|e| MediaError::Unavailable(format!("cannot write a temp file: {e}")))?;
        Ok((dir, input))
    }

    /// Probes, or explains a wrong container ("declared video/mp4 but the
    /// content is a PNG image").
    async fn probe_declared(
        &self,
        data: &[u8],
        input: &Path,
        declared: &MediaType,
        demuxers: &str,
        kind: &'static str,
        dir: &Path,
    ) -> Result<Probe, MediaError> {
        if data.is_empty() {
            return Err(MediaError::Invalid("the media is empty (0 bytes)".into()));
        }
        match self.probe(input, demuxers, kind, dir).await {
            Ok(p) => Ok(p),
            Err(MediaError::Invalid(detail)) => {
                // Say what it is when it is plainly something else.
                let wrong = match kind {
                    "GIF" => !data.starts_with(b"GIF8"),
                    _ => sniff::describe(data).is_some() && !sniff::is_audio_or_video(data),
                };
                if wrong {
                    Err(MediaError::Invalid(format!(
                        "declared {declared} but the content is {}",
                        sniff::describe_or_unknown(data)
                    )))
                } else {
                    Err(MediaError::Invalid(detail))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A voice note to Opus in Ogg (mono, 32 kbit/s).
    pub async fn voice(
        &self,
        data: &[u8],
        declared: &MediaType,
        timeout: Duration,
    ) -> Result<AvOutput, MediaError> {
        let kind = "voice note";
        let (dir, input) = self.workspace(data).await?;
        let d = dir.path();
        let probe = self
            .probe_declared(data, &input, declared, VOICE_DEMUXERS, kind, d)
            .await?;
        if !probe.audio {
            return Err(MediaError::Invalid(format!(
                "declared {declared} but the content has no audio stream"
            )));
        }
        let duration = probe
            .duration_secs
            .ok_or_else(|| MediaError::Invalid("cannot tell the voice note's duration".into()))?;
        if duration > VOICE_MAX_DURATION.as_secs_f64() {
            return Err(MediaError::TooLarge(format!(
                "the voice note is {duration:.0} s long; the limit is {} minutes",
                VOICE_MAX_DURATION.as_secs() / 60
            )));
        }
        let output = d.join("out.ogg");
        let mut args = input_args(&input, VOICE_DEMUXERS);
        args.extend(strs(&[
            "-map",
            "0:a:0",
            "-vn",
            "-sn",
            "-dn",
            "-map_metadata",
            "-1",
            "-map_chapters",
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
            "-threads",
            "1",
            "-t",
        ]));
        args.push(VOICE_MAX_DURATION.as_secs().to_string().into());
        args.extend(strs(&["-f", "ogg", "-y"]));
        args.push(file_url(&output));
        self.run(&self.config.ffmpeg, args, timeout, kind, d)
            .await?;
        let bytes = read_output(&output, kind).await?;
        Ok(AvOutput {
            bytes,
            content_type: "audio/ogg",
            width: 0,
            height: 0,
            duration_ms: secs_to_ms(duration),
            poster: None,
        })
    }

    /// A video to H.264/AAC in MP4, at most 720p and 30 frames/s, with a
    /// poster frame.
    pub async fn video(
        &self,
        data: &[u8],
        declared: &MediaType,
        timeout: Duration,
    ) -> Result<AvOutput, MediaError> {
        self.to_mp4(data, declared, timeout, "video", VIDEO_DEMUXERS)
            .await
    }

    /// An animated GIF to a silent H.264 MP4 with a poster frame.
    pub async fn gif(
        &self,
        data: &[u8],
        declared: &MediaType,
        timeout: Duration,
    ) -> Result<AvOutput, MediaError> {
        self.to_mp4(data, declared, timeout, "GIF", GIF_DEMUXERS)
            .await
    }

    async fn to_mp4(
        &self,
        data: &[u8],
        declared: &MediaType,
        timeout: Duration,
        kind: &'static str,
        demuxers: &str,
    ) -> Result<AvOutput, MediaError> {
        let (dir, input) = self.workspace(data).await?;
        let d = dir.path();
        let probe = self
            .probe_declared(data, &input, declared, demuxers, kind, d)
            .await?;
        let Some((w, h)) = probe.video.filter(|(w, h)| *w > 0 && *h > 0) else {
            return Err(MediaError::Invalid(format!(
                "declared {declared} but the content has no video stream"
            )));
        };
        if w > VIDEO_MAX_SIDE
            || h > VIDEO_MAX_SIDE
            || u64::from(w) * u64::from(h) > VIDEO_MAX_PIXELS
        {
            return Err(MediaError::TooLarge(format!(
                "the {kind} is {w}x{h} pixels; the limit is 3840x2160"
            )));
        }
        let max = VIDEO_MAX_DURATION.as_secs_f64();
        let duration = match (kind, probe.duration_secs) {
            (_, Some(d)) if d > max => {
                return Err(MediaError::TooLarge(format!(
                    "the {kind} is {d:.0} s long; the limit is {} minutes",
                    VIDEO_MAX_DURATION.as_secs() / 60
                )))
            }
            (_, Some(d)) => d,
            ("GIF", None) => 0.0,
            (_, None) => {
                return Err(MediaError::Invalid(format!(
                    "cannot tell the {kind}'s duration"
                )))
            }
        };
        let (ow, oh) = fit_720p(w, h);
        let scale = format!("scale={ow}:{oh}");
        let output = d.join("out.mp4");
        let poster = d.join("poster.jpg");
        let mut args = input_args(&input, demuxers);
        args.extend(strs(&["-map", "0:v:0"]));
        if kind == "GIF" {
            args.push("-an".into());
        } else {
            args.extend(strs(&[
                "-map", "0:a:0?", "-c:a", "aac", "-b:a", "96k", "-ac", "2",
            ]));
        }
        args.extend(strs(&[
            "-sn",
            "-dn",
            "-map_metadata",
            "-1",
            "-map_chapters",
            "-1",
            "-vf",
        ]));
        args.push(format!("{scale},format=yuv420p").into());
        args.extend(strs(&[
            "-fpsmax",
            "30",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "26",
            "-profile:v",
            "high",
            "-threads",
            "1",
            "-movflags",
            "+faststart",
            "-t",
        ]));
        args.push(VIDEO_MAX_DURATION.as_secs().to_string().into());
        args.extend(strs(&["-f", "mp4", "-y"]));
        args.push(file_url(&output));
        self.run(&self.config.ffmpeg, args, timeout, kind, d)
            .await?;
        // The poster: a frame 1 s in (the first for short clips), taken from
        // the result (already scaled and clean) in a second, short run:
        // much cheaper than a second output of the main run, which would
        // filter every frame.
        let at = if duration >= 2.0 { "1" } else { "0" };
        let mut args = strs(&[
            "-nostdin",
            "-hide_banner",
            "-v",
            "error",
            "-threads",
            "1",
            "-ss",
            at,
        ]);
        args.extend(input_args_tail(&output, "mov"));
        args.extend(strs(&[
            "-map",
            "0:v:0",
            "-frames:v",
            "1",
            "-map_metadata",
            "-1",
            "-c:v",
            "mjpeg",
            "-q:v",
            "4",
            "-f",
            "image2",
            "-update",
            "1",
            "-y",
        ]));
        args.push(file_url(&poster));
        if let Err(e) = self
            .run(
                &self.config.ffmpeg,
                args,
                POSTER_TIMEOUT.min(timeout),
                kind,
                d,
            )
            .await
        {
            // The video itself is fine; it goes without a poster.
            tracing::debug!(error = %e, "No poster frame.");
        }
        let bytes = read_output(&output, kind).await?;
        let poster = match tokio::fs::read(&poster).await {
            Ok(b) if !b.is_empty() => Some(Encoded {
                bytes: b,
                content_type: "image/jpeg",
                width: ow,
                height: oh,
            }),
            _ => None,
        };
        Ok(AvOutput {
            bytes,
            content_type: "video/mp4",
            width: ow,
            height: oh,
            duration_ms: secs_to_ms(duration.min(max)),
            poster,
        })
    }
}

fn strs(s: &[&str]) -> Vec<OsString> {
    s.iter().map(OsString::from).collect()
}

fn file_url(p: &Path) -> OsString {
    let mut s = OsString::from("file:");
    s.push(p);
    s
}

fn input_args(input: &Path, demuxers: &str) -> Vec<OsString> {
    let mut args = strs(&[
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-xerror",
        "-filter_threads",
        "1",
        "-threads",
        "1",
    ]);
    args.extend(input_args_tail(input, demuxers));
    args
}

/// `-format_whitelist <demuxers> -protocol_whitelist file -i file:<input>`.
fn input_args_tail(input: &Path, demuxers: &str) -> Vec<OsString> {
    let mut args = strs(&["-format_whitelist"]);
    args.push(demuxers.into());
    args.extend(strs(&["-protocol_whitelist", "file", "-i"]));
    args.push(file_url(input));
    args
}

async fn read_output(path: &Path, kind: &str) -> Result<Vec<u8>, MediaError> {
    match tokio::fs::read(path).await {
        Ok(b) if !b.is_empty() => Ok(b),
        _ => Err(MediaError::Invalid(format!(
            "the {kind} decoded to nothing (no frames or samples)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_720p_both_ways() {
        assert_eq!(fit_720p(1920, 1080), (1280, 720));
        assert_eq!(fit_720p(1080, 1920), (720, 1280));
        assert_eq!(fit_720p(640, 480), (640, 480));
        assert_eq!(fit_720p(1440, 1080), (960, 720));
        assert_eq!(fit_720p(321, 241), (320, 240));
    }

    #[test]
    fn parses_probe_output_with_rotation() {
        let json = br#"{"streams":[{"codec_type":"video","width":1920,"height":1080,
            "side_data_list":[{"rotation":-90}]},{"codec_type":"audio"}],
            "format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2","duration":"12.5"}}"#;
        let p = parse_probe(json).unwrap();
        assert_eq!(p.video, Some((1080, 1920)));
        assert!(p.audio);
        assert_eq!(p.duration_secs, Some(12.5));
        assert!(parse_probe(b"{}").is_err());
    }
}
