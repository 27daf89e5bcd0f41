//! What a blob looks like, from its first bytes: for details such as
//! "declared video/mp4 but the content is a PNG image", and for telling
//! animated from still GIFs without decoding them.

/// A human name of the format `data` starts with, if it is a common one.
pub fn describe(data: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| data.starts_with(m);
    let at = |off: usize, m: &[u8]| data.get(off..off + m.len()) == Some(m);
    Some(if starts(b"\xFF\xD8\xFF") {
        "a JPEG image"
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        "a PNG image"
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        "a GIF image"
    } else if starts(b"RIFF") && at(8, b"WEBP") {
        "a WebP image"
    } else if starts(b"RIFF") && at(8, b"WAVE") {
        "WAV audio"
    } else if starts(b"OggS") {
        "an Ogg stream"
    } else if at(4, b"ftyp") {
        "an MP4/QuickTime file"
    } else if starts(b"\x1A\x45\xDF\xA3") {
        "a Matroska/WebM file"
    } else if starts(b"ID3") || (data.len() > 1 && data[0] == 0xFF && data[1] & 0xE0 == 0xE0) {
        "MP3 audio"
    } else if starts(b"fLaC") {
        "FLAC audio"
    } else if starts(b"#!AMR") {
        "AMR audio"
    } else if starts(b"%PDF") {
        "a PDF document"
    } else if starts(b"PK\x03\x04") {
        "a ZIP archive"
    } else if starts(b"#EXTM3U") {
        "an HLS playlist"
    } else {
        return None;
    })
}

/// Whether `data` starts like an audio or video container.
pub fn is_audio_or_video(data: &[u8]) -> bool {
    matches!(
        describe(data),
        Some(
            "WAV audio"
                | "an Ogg stream"
                | "an MP4/QuickTime file"
                | "a Matroska/WebM file"
                | "MP3 audio"
                | "FLAC audio"
                | "AMR audio"
        )
    )
}

/// `describe`, or "unrecognised data".
pub fn describe_or_unknown(data: &[u8]) -> &'static str {
    if data.is_empty() {
        "empty"
    } else {
        describe(data).unwrap_or("unrecognised data")
    }
}

/// Counts a GIF's image frames, stopping at `stop`. Walks the block
/// structure only (no decoding). `None` if it is not a well-formed GIF.
pub fn gif_frames(data: &[u8], stop: usize) -> Option<usize> {
    if !(data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a")) || data.len() < 13 {
        return None;
    }
    let mut pos = 13;
    let packed = data[10];
    if packed & 0x80 != 0 {
        pos += 3 * (1usize << ((packed & 0x07) + 1));
    }
    let skip_sub_blocks = |mut pos: usize| -> Option<usize> {
        loop {
            let len = *data.get(pos)? as usize;
            pos += 1;
            if len == 0 {
                return Some(pos);
            }
            pos += len;
        }
    };
    let mut frames = 0;
    loop {
        match *data.get(pos)? {
            0x2C => {
                let packed = *data.get(pos + 9)?;
                pos += 10;
                if packed & 0x80 != 0 {
                    pos += 3 * (1usize << ((packed & 0x07) + 1));
                }
                pos += 1; // LZW minimum code size
                pos = skip_sub_blocks(pos)?;
                frames += 1;
                if frames >= stop {
                    return Some(frames);
                }
            }
            0x21 => pos = skip_sub_blocks(pos + 2)?,
            0x3B => return Some(frames),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_common_formats() {
        assert_eq!(describe(b"\x89PNG\r\n\x1a\n...."), Some("a PNG image"));
        assert_eq!(
            describe(b"\0\0\0\x20ftypisom"),
            Some("an MP4/QuickTime file")
        );
        assert_eq!(describe(b"hello"), None);
        assert_eq!(describe_or_unknown(b""), "empty");
    }

    #[test]
    fn counts_gif_frames_without_decoding() {
        // Header, 1x1 screen without a colour table, two 1x1 frames.
        let mut gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00".to_vec();
        let frame = b"\x2C\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00";
        gif.extend_from_slice(frame);
        assert_eq!(gif_frames(&[gif.as_slice(), b";"].concat(), 10), Some(1));
        gif.extend_from_slice(b"\x21\xF9\x04\x00\x0A\x00\x00\x00");
        gif.extend_from_slice(frame);
        gif.push(0x3B);
        assert_eq!(gif_frames(&gif, 10), Some(2));
        assert_eq!(gif_frames(&gif[..20], 10), None, "truncated");
    }
}
