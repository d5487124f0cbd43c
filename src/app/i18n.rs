//! The UI's own strings, in Chinese and English. Every string the app shows goes through [`tr`];
//! the bundled CJK font is built to cover all of them (`tools/fonts/subset_cjk.py` reads this file).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    Zh,
    En,
}

macro_rules! strings {
    ($($key:ident => $zh:literal, $en:literal;)*) => {
        /// One UI string.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Key { $($key),* }

        impl Key {
            /// Every key (tests check each is non-empty in both languages).
            pub const ALL: &'static [Key] = &[$(Key::$key),*];
        }

        /// The text of `key` in `lang`.
        pub fn tr(lang: Lang, key: Key) -> &'static str {
            match key {
                $(Key::$key => match lang { Lang::Zh => $zh, Lang::En => $en },)*
            }
        }
    };
}

strings! {
    AppTitle => "智脑对话", "Zhinao Chat";
    NewChat => "新对话", "New chat";
    Conversations => "对话", "Conversations";
    Rename => "重命名", "Rename";
    RenameField => "对话标题", "Conversation title";
    Save => "保存", "Save";
    Cancel => "取消", "Cancel";
    Delete => "删除", "Delete";
    ConfirmDelete => "确认删除", "Confirm delete";
    Send => "发送", "Send";
    Stop => "停止", "Stop";
    Stopping => "正在停止…", "Stopping…";
    Regenerate => "重新生成", "Regenerate";
    Edit => "编辑", "Edit";
    EditField => "编辑消息", "Edit message";
    SaveAndRerun => "保存并重新生成", "Save and re-run";
    Copy => "复制", "Copy";
    MessageField => "消息", "Message";
    InputHint => "输入消息（Enter 发送，Shift+Enter 换行）", "Type a message (Enter sends, Shift+Enter adds a line)";
    You => "你", "You";
    Assistant => "智脑", "Zhinao";
    Generating => "生成中…", "Generating…";
    Settings => "设置", "Settings";
    SystemPrompt => "系统提示", "System prompt";
    Sampling => "采样参数", "Sampling";
    Temperature => "温度 temperature", "temperature";
    TopP => "top_p", "top_p";
    TopK => "top_k（0 = 不限）", "top_k (0 = off)";
    RepetitionPenalty => "重复惩罚 repetition_penalty", "repetition_penalty";
    MaxNewTokens => "最多生成 tokens", "max new tokens";
    ResetSampling => "恢复模型默认值", "Reset to the model's defaults";
    SamplingFromModel => "（来自 generation_config.json）", "(from generation_config.json)";
    SamplingCustom => "（自定义）", "(custom)";
    Memory => "上下文与 KV 缓存", "Context and KV cache";
    ContextLength => "上下文长度（0 = 模型最大值）", "context length (0 = the model's)";
    KvCache => "KV 缓存", "KV cache";
    KvCacheHint => "q8/q4 省显存：q4 约为 f16 的 1/3，长上下文用", "q8/q4 save memory: q4 is about 1/3 of f16, for long contexts";
    Reload => "重新加载模型以应用", "Reload the model to apply";
    Model => "模型", "Model";
    ModelPath => "模型目录", "Model directory";
    OpenModel => "打开", "Open";
    Browse => "浏览…", "Browse…";
    BrowseTitle => "选择模型目录", "Choose a model directory";
    Up => "上一级", "Up";
    OpenThisDir => "打开此目录", "Open this directory";
    IsModelDir => "（模型）", "(model)";
    NoModel => "未加载模型", "No model loaded";
    Loading => "正在加载", "Loading";
    LoadFailed => "加载失败", "Loading failed";
    Context => "上下文", "Context";
    Left => "剩余", "left";
    Dark => "深色", "Dark";
    Light => "浅色", "Light";
    Language => "English", "中文";
    Dismiss => "关闭", "Dismiss";
    FirstToken => "首 token", "first token";
    Seconds => "秒", "s";
    TokensPerSec => "tokens/秒", "tokens/s";
    Tokens => "tokens", "tokens";
    StoppedByUser => "已停止", "stopped";
    StoppedLength => "达到长度上限", "length limit reached";
    StoppedContext => "上下文已满", "context full";
    Error => "错误", "Error";
    Empty => "开始一段新对话吧。", "Start a new conversation.";
    Recent => "最近", "Recent";
}
