//! Images, in-process: decode (JPEG, PNG, WebP, GIF) within limits, apply
//! the EXIF orientation, resize so the long edge is at most `max_edge`, and
//! encode as JPEG or (lossless) WebP, plus a thumbnail.
//!
//! Metadata is stripped by construction: only pixels (and a small ICC colour
//! profile, which says nothing about the user) reach the encoder, so EXIF
//! (GPS, camera, time), XMP and comments are gone.

use std::io::Cursor;

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::webp::WebPEncoder;
use image::metadata::Orientation;
use image::{
    DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageError, ImageFormat,
    ImageReader, Limits, RgbImage, RgbaImage,
};

use crate::error::MediaError;
use crate::formats::{MediaType, IMAGE_MAX_PIXELS};
use crate::transcode::sniff;

/// ICC profiles larger than this are dropped (sRGB is assumed).
const MAX_ICC_BYTES: usize = 64 * 1024;
/// Most memory the decoder may allocate.
const MAX_DECODER_ALLOC: u64 = 512 * 1024 * 1024;

/// An encoding the gateway produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageEncoding {
    Jpeg {
        quality: u8,
    },
    /// Lossless (the `image` crate's WebP encoder); for stickers.
    WebpLossless,
}

impl ImageEncoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg { .. } => "image/jpeg",
            Self::WebpLossless => "image/webp",
        }
    }

    /// Names the encoding in cache keys.
    pub fn tag(self) -> String {
        match self {
            Self::Jpeg { quality } => format!("jpeg-q{quality}"),
            Self::WebpLossless => "webp-lossless".into(),
        }
    }
}

/// What to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTarget {
    pub encoding: ImageEncoding,
    /// Long edge of the result at most (smaller images keep their size).
    pub max_edge: u32,
    pub thumbnail_encoding: ImageEncoding,
    pub thumbnail_edge: u32,
}

impl ImageTarget {
    /// Photos: JPEG, long edge 1600, thumbnail 320.
    pub const PHOTO_JPEG: Self = Self {
        encoding: ImageEncoding::Jpeg { quality: 82 },
        max_edge: 1600,
        thumbnail_encoding: ImageEncoding::Jpeg { quality: 70 },
        thumbnail_edge: 320,
    };
    /// Photos for recipients without JPEG: lossless WebP (larger).
    pub const PHOTO_WEBP: Self = Self {
        encoding: ImageEncoding::WebpLossless,
        max_edge: 1600,
        thumbnail_encoding: ImageEncoding::WebpLossless,
        thumbnail_edge: 320,
    };
    /// Stickers: WebP with transparency, at most 512 px.
    pub const STICKER_WEBP: Self = Self {
        encoding: ImageEncoding::WebpLossless,
        max_edge: 512,
        thumbnail_encoding: ImageEncoding::WebpLossless,
        thumbnail_edge: 128,
    };

    /// Names the target in cache keys (changing a setting changes the key).
    pub fn tag(&self) -> String {
        format!("img-{}-{}", self.encoding.tag(), self.max_edge,)
    }

    pub fn thumbnail_tag(&self) -> String {
        format!(
            "thumb-{}-{}-of-{}",
            self.thumbnail_encoding.tag(),
            self.thumbnail_edge,
            self.tag()
        )
    }
}

/// One encoded image.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

/// The result and its thumbnail.
#[derive(Debug, Clone)]
pub struct ImageOutput {
    pub image: Encoded,
    pub thumbnail: Encoded,
}

fn format_of(t: &MediaType) -> Option<ImageFormat> {
    Some(match t.as_str() {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" => ImageFormat::Png,
        "image/webp" => ImageFormat::WebP,
        "image/gif" => ImageFormat::Gif,
        _ => return None,
    })
}

/// The decoder's limits: memory only. Pixel counts are checked from the
/// header first ([`too_many_pixels`]), with a clearer message.
fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_alloc = Some(MAX_DECODER_ALLOC);
    l
}

fn decode_error(e: ImageError, what: &str) -> MediaError {
    match e {
        ImageError::Limits(l) => MediaError::TooLarge(format!("the image is over a limit: {l}")),
        other => MediaError::Invalid(format!("{what}: {other}")),
    }
}

fn too_many_pixels(w: u32, h: u32) -> Option<MediaError> {
    let pixels = u64::from(w) * u64::from(h);
    (pixels > IMAGE_MAX_PIXELS).then(|| {
        MediaError::TooLarge(format!(
            "the image is {w}x{h} pixels ({:.1} megapixels); the limit is {} megapixels",
            pixels as f64 / 1e6,
            IMAGE_MAX_PIXELS / 1_000_000
        ))
    })
}

/// Checks that `data` is an image of the declared type and returns its
/// header dimensions, without decoding pixels. Works on a prefix of the
/// file too (uploads check it while streaming): then an error may only mean
/// "not enough bytes yet".
pub fn probe_dimensions(data: &[u8], declared: &MediaType) -> Result<(u32, u32), MediaError> {
    let format = check_format(data, declared)?;
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    reader.limits(limits());
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| decode_error(e, "the image header is corrupt or truncated"))?;
    match too_many_pixels(w, h) {
        Some(e) => Err(e),
        None => Ok((w, h)),
    }
}

fn check_format(data: &[u8], declared: &MediaType) -> Result<ImageFormat, MediaError> {
    if data.is_empty() {
        return Err(MediaError::Invalid("the media is empty (0 bytes)".into()));
    }
    let format = format_of(declared)
        .ok_or_else(|| MediaError::Unsupported(format!("cannot process {declared} images")))?;
    match image::guess_format(data) {
        Ok(f) if f == format => Ok(format),
        _ => Err(MediaError::Invalid(format!(
            "declared {declared} but the content is {}",
            sniff::describe_or_unknown(data)
        ))),
    }
}

fn fit(w: u32, h: u32, max_edge: u32) -> (u32, u32) {
    let long = w.max(h);
    if long <= max_edge {
        return (w, h);
    }
    let scale = f64::from(max_edge) / f64::from(long);
    let sw = ((f64::from(w) * scale).round() as u32).clamp(1, max_edge);
    let sh = ((f64::from(h) * scale).round() as u32).clamp(1, max_edge);
    (sw, sh)
}

/// Pixels ready to encode: RGB for JPEG, RGBA when transparency matters.
enum Pixels {
    Rgb(RgbImage),
    Rgba(RgbaImage),
}

impl Pixels {
    fn dimensions(&self) -> (u32, u32) {
        match self {
            Self::Rgb(i) => i.dimensions(),
            Self::Rgba(i) => i.dimensions(),
        }
    }

    fn resized(&self, max_edge: u32) -> Result<Self, MediaError> {
        let (w, h) = self.dimensions();
        let (tw, th) = fit(w, h, max_edge);
        if (tw, th) == (w, h) {
            return Ok(match self {
                Self::Rgb(i) => Self::Rgb(i.clone()),
                Self::Rgba(i) => Self::Rgba(i.clone()),
            });
        }
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
        let mut resizer = Resizer::new();
        let err = |e: fast_image_resize::ResizeError| {
            MediaError::Invalid(format!("cannot resize the image: {e}"))
        };
        Ok(match self {
            Self::Rgb(src) => {
                let mut dst = RgbImage::new(tw, th);
                resizer.resize(src, &mut dst, &options).map_err(err)?;
                Self::Rgb(dst)
            }
            Self::Rgba(src) => {
                let mut dst = RgbaImage::new(tw, th);
                resizer.resize(src, &mut dst, &options).map_err(err)?;
                Self::Rgba(dst)
            }
        })
    }

    fn encode(&self, encoding: ImageEncoding, icc: Option<&[u8]>) -> Result<Encoded, MediaError> {
        let (width, height) = self.dimensions();
        let mut bytes = Vec::new();
        let (raw, color) = match self {
            Self::Rgb(i) => (i.as_raw(), ExtendedColorType::Rgb8),
            Self::Rgba(i) => (i.as_raw(), ExtendedColorType::Rgba8),
        };
        let result = match encoding {
            ImageEncoding::Jpeg { quality } => {
                let mut enc = JpegEncoder::new_with_quality(&mut bytes, quality);
                if let Some(icc) = icc {
                    // Unsupported profiles are dropped: sRGB is assumed.
                    enc.set_icc_profile(icc.to_vec()).ok();
                }
                enc.write_image(raw, width, height, color)
            }
            ImageEncoding::WebpLossless => {
                let mut enc = WebPEncoder::new_lossless(&mut bytes);
                if let Some(icc) = icc {
                    enc.set_icc_profile(icc.to_vec()).ok();
                }
                enc.write_image(raw, width, height, color)
            }
        };
        result.map_err(|e| MediaError::Invalid(format!("cannot encode the image: {e}")))?;
        Ok(Encoded {
            bytes,
            content_type: encoding.content_type(),
            width,
            height,
        })
    }
}

/// Flattens transparency onto white (JPEG has no alpha).
fn flatten(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            let v = (u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255;
            dst[c] = u8::try_from(v).unwrap_or(255);
        }
    }
    out
}

/// Decodes `data` (declared as `declared`) and produces `target`. CPU-bound:
/// run it on a blocking thread.
pub fn transcode_image(
    data: &[u8],
    declared: &MediaType,
    target: &ImageTarget,
) -> Result<ImageOutput, MediaError> {
    let format = check_format(data, declared)?;
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    reader.limits(limits());
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_error(e, "the image header is corrupt or truncated"))?;
    let (w, h) = decoder.dimensions();
    if let Some(e) = too_many_pixels(w, h) {
        return Err(e);
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder
        .icc_profile()
        .ok()
        .flatten()
        .filter(|p| p.len() <= MAX_ICC_BYTES);
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| decode_error(e, "the image is corrupt or truncated"))?;
    img.apply_orientation(orientation);
    let pixels = match target.encoding {
        ImageEncoding::WebpLossless if img.color().has_alpha() => Pixels::Rgba(img.to_rgba8()),
        ImageEncoding::WebpLossless => Pixels::Rgb(img.to_rgb8()),
        ImageEncoding::Jpeg { .. } => Pixels::Rgb(flatten(&img)),
    };
    drop(img);
    let resized = pixels.resized(target.max_edge)?;
    drop(pixels);
    let image = resized.encode(target.encoding, icc.as_deref())?;
    let thumbnail = resized
        .resized(target.thumbnail_edge)?
        .encode(target.thumbnail_encoding, icc.as_deref())?;
    Ok(ImageOutput { image, thumbnail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_long_edge() {
        assert_eq!(fit(4000, 3000, 1600), (1600, 1200));
        assert_eq!(fit(3000, 4000, 1600), (1200, 1600));
        assert_eq!(fit(800, 600, 1600), (800, 600));
        assert_eq!(fit(100_000, 1, 1600), (1600, 1));
    }
}
