"""The browser demo (Gradio): upload an image, chat about it with streaming answers, tune sampling.

One process: the Gradio app calls the batching engine directly, so several browser sessions are
decoded together. A question about other images than the conversation's starts a new conversation
(the model reads its images in the first turn); "Clear" forgets the conversation and keeps the images.
A model that takes several images (v7 format) gets a "More images" box beside the first image: its
files follow the first one, in order, up to the model's limit.
Answers are shown verbatim (no Markdown rendering), exactly as the model wrote them; the images a
conversation starts with are shown in its first question. The example images and questions that come
with the package sit under the chat. `launch(share=..., api_key=...)`: a public gradio.live link, and a
login page that asks for the key.
"""

from __future__ import annotations

import os
import secrets

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local demo phones nobody

import gradio as gr  # noqa: E402

from visualrwkv.demo import EXAMPLES_DIR, load_examples  # noqa: E402
from visualrwkv.engine.engine import Engine, ImageInput  # noqa: E402
from visualrwkv.engine.sampling import SamplingParams  # noqa: E402
from visualrwkv.vision.image import ImageError, load_image  # noqa: E402

# system fonts only: the default theme would fetch web fonts, which offline machines cannot
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
EMPTY_ANSWER = "(empty answer)"
NEW_CONVERSATION = {"image": (), "pairs": []}  # "image": the paths of the conversation's images, in order


def build_demo(engine: Engine, defaults: SamplingParams | None = None, note: str | None = None) -> gr.Blocks:
    """`note`: a line shown under the title (e.g. why decoding is greedy by default)."""
    d = defaults or SamplingParams()
    max_tokens_limit = engine.max_new_tokens or 1024
    with gr.Blocks(title="VisualRWKV") as demo:
        gr.Markdown(f"## VisualRWKV · `{engine.model_id}`\nUpload an image, then ask about it. "
                    "Asking about a new image starts a new conversation." + (f"\n\n{note}" if note else ""),
                    elem_id="intro")
        # what the engine sees: the conversation's image and its (question, answer) pairs. The reset
        # for a new image happens when the question is asked, not on the upload event, so a late
        # upload event can never wipe a conversation that has already started.
        conversation = gr.State(NEW_CONVERSATION)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="image")
                takes = engine.model.max_images
                more = gr.File(file_count="multiple", file_types=["image"], type="filepath", elem_id="more_images",
                               label="More images, after the first, in order"
                                     + (f" (at most {takes - 1})" if takes else ""),
                               visible=takes is None or takes > 1)
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0, 2, value=d.temperature, step=0.05, label="Temperature (0 = greedy)",
                                            elem_id="temperature")
                    top_p = gr.Slider(0, 1, value=d.top_p, step=0.05, label="Top-p")
                    top_k = gr.Slider(0, 100, value=d.top_k, step=1, label="Top-k (0 = off)")
                    presence = gr.Slider(-2, 2, value=d.presence_penalty, step=0.05, label="Presence penalty")
                    frequency = gr.Slider(-2, 2, value=d.frequency_penalty, step=0.05, label="Frequency penalty")
                    max_tokens = gr.Slider(1, max_tokens_limit, value=min(d.max_tokens, max_tokens_limit), step=1,
                                           label="Max new tokens")
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(elem_id="chatbot", height=420, render_markdown=False, label="Conversation")
                question = gr.Textbox(placeholder="Ask about the image…", show_label=False, elem_id="question",
                                      lines=1)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear", elem_id="clear")
                # clicking one fills the image and the question; asking stays the user's move
                gr.Examples([[str(EXAMPLES_DIR / ex["image"]), ex["question"]] for ex in load_examples()],
                            [image, question], label="Examples (the shipped model's shapes)", elem_id="examples",
                            cache_examples=False)

        def respond(text, image_path, more_paths, state, messages, temperature, top_p, top_k, presence, frequency,
                    max_tokens, seed):
            text = (text or "").strip()
            if not text:
                raise gr.Error("Type a question first.")
            paths = tuple(p for p in [image_path, *(more_paths or [])] if p)
            history = state["pairs"]
            if paths != state["image"]:
                history, messages = [], []
            try:
                params = SamplingParams(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                                        presence_penalty=float(presence), frequency_penalty=float(frequency),
                                        max_tokens=int(max_tokens),
                                        seed=None if seed is None or int(seed) < 0 else int(seed))
                pictures = [ImageInput.from_path(path) for path in paths]
                handle = engine.ask(text, pictures, history, params)
            except ValueError as e:
                raise gr.Error(str(e)) from None
            # the first question of a conversation shows its images (in the same bubble, before the text)
            asked = text if history else [*({"path": path} for path in paths), text]
            messages = list(messages or []) + [{"role": "user", "content": asked},
                                               {"role": "assistant", "content": ""}]
            state = {"image": paths, "pairs": history}
            yield messages, state, ""
            try:
                for delta in handle:
                    messages[-1] = {"role": "assistant", "content": messages[-1]["content"] + delta}
                    yield messages, state, ""
                answer = handle.result().text
            finally:
                handle.cancel()  # the browser went away mid-answer: free the batch row
            if answer:
                state = {"image": paths, "pairs": history + [(text, answer)]}
            else:
                messages[-1] = {"role": "assistant", "content": EMPTY_ANSWER}
            yield messages, state, ""

        def check_upload(upload):
            """Read the new image at once (the raw upload: gradio would open it with PIL and fail with a
            bare "Error"); a file that is no usable image is named in a message and taken away."""
            if not upload:
                return gr.skip()
            path = upload["path"] if isinstance(upload, dict) else upload.path
            shown = (upload.get("orig_name") if isinstance(upload, dict) else upload.orig_name) or path
            try:
                load_image(path, name=repr(os.path.basename(shown)))
            except ImageError as e:
                gr.Warning(str(e))
                return None
            return gr.skip()

        image.upload(check_upload, image, image, preprocess=False)
        inputs = [question, image, more, conversation, chatbot, temperature, top_p, top_k, presence, frequency,
                  max_tokens, seed]
        outputs = [chatbot, conversation, question]
        send.click(respond, inputs, outputs, concurrency_limit=engine.max_batch_size)
        question.submit(respond, inputs, outputs, concurrency_limit=engine.max_batch_size)
        clear.click(lambda: ([], NEW_CONVERSATION, ""), None, outputs, queue=False)
        chatbot.clear(lambda: NEW_CONVERSATION, None, conversation, queue=False)  # the chat's own trash button
    return demo


def launch(engine: Engine, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
           defaults: SamplingParams | None = None, note: str | None = None, share: bool = False,
           api_key: str | None = None) -> gr.Blocks:
    """Serve the demo; with `block=False` return at once (call `demo.close()` to stop). `share`: also a
    public gradio.live link (needs the internet); `api_key`: a login page that takes any user name and
    this key as the password."""
    demo = build_demo(engine, defaults, note)
    demo.queue(default_concurrency_limit=engine.max_batch_size)
    auth = None
    if api_key:
        def auth(user: str, password: str) -> bool:
            return secrets.compare_digest(password.encode(), api_key.encode())
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, theme=THEME, quiet=not block,
                footer_links=[], share=share, auth=auth,
                auth_message="Enter any user name and the server's API key as the password." if auth else None)
    return demo
