//! The `zhinao-chat` binary in a real window: scripted mode (`--prompt --screenshot
//! --exit-after-reply`) with the tiny checkpoint, under Xvfb when no display is set. It must exit
//! 0, report that the UI renderer and the engine share one device, and leave a PNG that is not
//! blank. Under CI=true a missing `xvfb-run` fails the test instead of skipping it.

use std::path::Path;
use std::process::Command;

use super::common::{tmp_dir, under_ci, MODEL};

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
}

/// `zhinao-chat args…`, inside `xvfb-run` unless a display is available (set
/// `ZHINAO_APP_TEST_XVFB=1` to use Xvfb anyway and keep the window off a desktop).
fn chat_command(args: &[&str]) -> Option<Command> {
    let bin = env!("CARGO_BIN_EXE_zhinao-chat");
    let has_display = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if has_display && std::env::var_os("ZHINAO_APP_TEST_XVFB").is_none() {
        let mut c = Command::new(bin);
        c.args(args);
        return Some(c);
    }
    if !have("xvfb-run") {
        assert!(!under_ci(), "CI needs xvfb-run for the window test (apt-get install xvfb)");
        eprintln!("SKIPPED: no display and no xvfb-run");
        return None;
    }
    let mut c = Command::new("xvfb-run");
    c.args(["-a", "-s", "-screen 0 1280x800x24 -nolisten tcp", bin]).args(args);
    c.env_remove("WAYLAND_DISPLAY");
    Some(c)
}

fn distinct_colors(png: &Path) -> usize {
    let img = image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display())).to_rgba8();
    assert!(img.width() >= 640 && img.height() >= 400, "{}x{}", img.width(), img.height());
    img.pixels().map(|p| p.0).collect::<std::collections::HashSet<_>>().len()
}

#[test]
fn scripted_mode_in_a_real_window() {
    let dir = tmp_dir("window");
    let shot = dir.join("shot.png");
    let data = dir.join("data");
    let args = [
        "--model",
        MODEL,
        "--data-dir",
        data.to_str().unwrap(),
        "--lang",
        "zh",
        "--theme",
        "dark",
        "--size",
        "960x640",
        "--prompt",
        "你好，请介绍一下你自己",
        "--screenshot",
        shot.to_str().unwrap(),
        "--exit-after-reply",
        "--max-new-tokens",
        "48",
        "--timeout",
        "240",
    ];
    let Some(mut cmd) = chat_command(&args) else { return };
    let out = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "zhinao-chat failed ({:?})", out.status);
    assert!(stderr.contains("ui device shared with engine: true"), "the UI and the engine must share one device");
    let colors = distinct_colors(&shot);
    assert!(colors > 50, "the screenshot looks blank ({colors} colours)");
    // The conversation was written to the data directory.
    let (convs, errors) = zhinao::app::store::Store::open(&data).unwrap().list();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(convs[0].turns[0].content, "你好，请介绍一下你自己");
    assert!(convs[0].turns[1].stats.is_some());
}

#[test]
fn scripted_mode_fails_on_a_bad_model() {
    let dir = tmp_dir("window-bad");
    let shot = dir.join("shot.png");
    let data = dir.join("data");
    let args = [
        "--model",
        "no/such/model",
        "--data-dir",
        data.to_str().unwrap(),
        "--prompt",
        "hi",
        "--screenshot",
        shot.to_str().unwrap(),
        "--exit-after-reply",
        "--timeout",
        "120",
    ];
    let Some(mut cmd) = chat_command(&args) else { return };
    let out = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("model failed to load"), "{stderr}");
    assert!(!shot.exists());
}
