//! Image bytes → the model's input tensor, following the manifest's input spec:
//! decode (PNG, JPEG, WebP, BMP, GIF; first frame) → colour conversion (grayscale uses the `image`
//! crate's Rec. 709 luma; RGB drops alpha) → resize to H×W when the size differs (bilinear = the
//! triangle filter, or nearest) → scale → optional inversion (1 − x) → (x − mean) / std, in CHW order.

use std::io::Cursor;

use image::{imageops::FilterType, DynamicImage, ImageFormat, ImageReader};

use crate::error::Error;
use crate::model::manifest::{InputSpec, Resize};

pub const ACCEPTED_FORMATS: &str = "PNG, JPEG, WebP, BMP, GIF";

/// Maps a Content-Type to an image format; `None` for types that are not images we decode.
pub fn format_from_content_type(ct: &str) -> Option<ImageFormat> {
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" | "image/jpg" => Some(ImageFormat::Jpeg),
        "image/webp" => Some(ImageFormat::WebP),
        "image/bmp" | "image/x-bmp" | "image/x-ms-bmp" => Some(ImageFormat::Bmp),
        "image/gif" => Some(ImageFormat::Gif),
        _ => None,
    }
}

fn check_format(f: ImageFormat) -> Result<ImageFormat, Error> {
    match f {
        ImageFormat::Png
        | ImageFormat::Jpeg
        | ImageFormat::WebP
        | ImageFormat::Bmp
        | ImageFormat::Gif => Ok(f),
        other => Err(Error::UnsupportedMediaType(format!(
            "image format {other:?} is not supported; accepted: {ACCEPTED_FORMATS}"
        ))),
    }
}

/// Decodes an image. The pixel count is read from the header and checked against `max_pixels`
/// before any pixel is decoded.
pub fn decode(
    bytes: &[u8],
    hint: Option<ImageFormat>,
    max_pixels: u64,
) -> Result<DynamicImage, Error> {
    if bytes.is_empty() {
        return Err(Error::invalid(format!(
            "empty body: send an image ({ACCEPTED_FORMATS}), multipart field `image`, or JSON {{\"image\": base64}} / {{\"tensor\": [...]}}"
        )));
    }
    let sniffed = image::guess_format(bytes).ok();
    let format = match (sniffed, hint) {
        (Some(f), _) => check_format(f)?,
        (None, Some(f)) => f,
        (None, None) => {
            return Err(Error::UnsupportedMediaType(format!(
                "the body is not a recognised image; accepted: {ACCEPTED_FORMATS}"
            )))
        }
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| Error::invalid(format!("cannot read the {format:?} header: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(Error::TooLarge(format!(
            "image is {w}x{h} = {pixels} pixels; the limit is {max_pixels} (--max-image-pixels)"
        )));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    reader.decode().map_err(|e| {
        Error::invalid(format!(
            "cannot decode the {format:?} image (truncated or corrupt?): {e}"
        ))
    })
}

/// Converts a decoded image into the normalised CHW tensor of `spec`.
pub fn to_tensor(img: &DynamicImage, spec: &InputSpec) -> Vec<f32> {
    let (w, h) = (spec.width as u32, spec.height as u32);
    let filter = match spec.resize {
        Resize::Nearest => FilterType::Nearest,
        Resize::Bilinear => FilterType::Triangle,
    };
    let resized;
    let img = if img.width() != w || img.height() != h {
        resized = img.resize_exact(w, h, filter);
        &resized
    } else {
        img
    };
    let plane = spec.height * spec.width;
    let mut out = vec![0f32; spec.len()];
    let mut put = |c: usize, i: usize, v: u8| {
        let mut x = f32::from(v) * spec.scale;
        if spec.invert {
            x = 1.0 - x;
        }
        out[c * plane + i] = (x - spec.mean[c]) / spec.std[c];
    };
    if spec.channels == 1 {
        for (i, p) in img.to_luma8().pixels().enumerate() {
            put(0, i, p.0[0]);
        }
    } else {
        for (i, p) in img.to_rgb8().pixels().enumerate() {
            for c in 0..3 {
                put(c, i, p.0[c]);
            }
        }
    }
    out
}

pub fn image_to_tensor(
    bytes: &[u8],
    hint: Option<ImageFormat>,
    spec: &InputSpec,
    max_pixels: u64,
) -> Result<Vec<f32>, Error> {
    Ok(to_tensor(&decode(bytes, hint, max_pixels)?, spec))
}

/// Validates a preprocessed tensor sent by the client.
pub fn check_tensor(data: &[f32], spec: &InputSpec) -> Result<(), Error> {
    if data.len() != spec.len() {
        return Err(Error::invalid(format!(
            "tensor has {} values; this model takes {} = {}x{}x{} (C x H x W, preprocessed floats)",
            data.len(),
            spec.len(),
            spec.channels,
            spec.height,
            spec.width
        )));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "tensor value at index {i} is {}; only finite floats are accepted",
            data[i]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InputSpec {
        InputSpec {
            kind: crate::model::manifest::InputKind::Image,
            shape: vec![1, 2, 2],
            dtype: crate::model::manifest::Dtype::Float32,
            time: crate::model::manifest::TimeMode::Static,
            channels: 1,
            height: 2,
            width: 2,
            color: crate::model::manifest::Color::Grayscale,
            scale: 1.0 / 255.0,
            mean: vec![0.5],
            std: vec![0.25],
            invert: false,
            resize: Resize::Bilinear,
            layout: crate::model::manifest::Layout::Nchw,
        }
    }

    fn png(w: u32, h: u32, pixels: Vec<u8>) -> Vec<u8> {
        let img = image::GrayImage::from_raw(w, h, pixels).expect("size");
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .expect("encode");
        out
    }

    #[test]
    fn normalises_grayscale_png() {
        let t = image_to_tensor(&png(2, 2, vec![0, 255, 51, 204]), None, &spec(), 100).expect("ok");
        let want = [0.0f32, 1.0, 0.2, 0.8].map(|x| (x - 0.5) / 0.25);
        for (a, b) in t.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn rejects_too_many_pixels_before_decoding() {
        let err = image_to_tensor(&png(20, 20, vec![0; 400]), None, &spec(), 399).unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    }

    #[test]
    fn rejects_non_images_and_truncated_ones() {
        assert!(matches!(
            decode(b"hello", None, 100),
            Err(Error::UnsupportedMediaType(_))
        ));
        let mut p = png(2, 2, vec![1, 2, 3, 4]);
        p.truncate(p.len() - 20);
        assert!(matches!(
            decode(&p, None, 100),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            decode(&[], None, 100),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn resizes_to_the_model_size() {
        let t = image_to_tensor(&png(4, 4, vec![255; 16]), None, &spec(), 100).expect("ok");
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|v| (v - 2.0).abs() < 1e-6));
    }

    #[test]
    fn tensor_checks() {
        assert!(check_tensor(&[0.0; 4], &spec()).is_ok());
        assert!(check_tensor(&[0.0; 3], &spec())
            .unwrap_err()
            .to_string()
            .contains("takes 4"));
        assert!(check_tensor(&[0.0, f32::NAN, 0.0, 0.0], &spec()).is_err());
    }
}
