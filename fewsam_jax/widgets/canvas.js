// fewsam_jax SliceCanvas: shows a PNG (the slice with overlays) at a zoom, draws a live brush / box
// preview and sends pointer events to Python in image pixel coordinates (row, col; pixel centres
// are integers). With shortcut_keys / wheel_slices set it also sends those keys (the canvas takes the
// focus when clicked) and wheel steps over it. DOM: <div class="fewsam-canvas-wrap"><canvas class="fewsam-canvas" data-*></div>.

const WHEEL_STEP_PX = 100; // one mouse-wheel notch in Chromium and Firefox (pixel mode)

function clamp(v, lo, hi) {
  return Math.min(Math.max(v, lo), hi);
}

function render({ model, el }) {
  const wrap = document.createElement("div");
  wrap.className = "fewsam-canvas-wrap";
  wrap.style.display = "inline-block";
  wrap.style.lineHeight = "0";
  const canvas = document.createElement("canvas");
  canvas.className = "fewsam-canvas";
  canvas.style.touchAction = "none";
  canvas.style.userSelect = "none";
  canvas.dataset.renderCount = "0";
  // keys pressed while the canvas has the focus are the annotator's, not JupyterLab's command shortcuts
  canvas.dataset.lmSuppressShortcuts = "true";
  canvas.dataset.pSuppressShortcuts = "true";
  wrap.appendChild(canvas);
  el.appendChild(wrap);

  let image = null; // decoded HTMLImageElement of the current PNG
  let loadToken = 0;
  let gesture = null; // {points: [{row, col}], pointerId, button}
  let pending = null; // the last finished gesture, drawn until Python's new image arrives
  let pendingTimer = null;
  let hover = null;

  const width = () => Math.max(1, model.get("image_width"));
  const height = () => Math.max(1, model.get("image_height"));

  function resize() {
    const cssW = Math.max(1, Math.round(width() * model.get("zoom")));
    const cssH = Math.max(1, Math.round(height() * model.get("zoom") * model.get("aspect")));
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = cssW + "px";
    canvas.style.height = cssH + "px";
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
    canvas.dataset.imageWidth = String(width());
    canvas.dataset.imageHeight = String(height());
    canvas.dataset.tool = model.get("tool");
    if (model.get("shortcut_keys").length) canvas.tabIndex = 0;
    else canvas.removeAttribute("tabindex");
    canvas.style.cursor = model.get("tool") === "none" ? "default" : "crosshair";
    draw();
  }

  function toImage(event) {
    const rect = canvas.getBoundingClientRect();
    const col = ((event.clientX - rect.left) / rect.width) * width() - 0.5;
    const row = ((event.clientY - rect.top) / rect.height) * height() - 0.5;
    return { row: clamp(row, 0, height() - 1), col: clamp(col, 0, width() - 1) };
  }

  function drawPreview(ctx, shape, sx, sy) {
    const tool = model.get("tool");
    const color = model.get("preview_color");
    const pts = shape.points;
    if ((tool === "brush" || tool === "eraser") && pts.length) {
      const r = model.get("brush_radius");
      ctx.save();
      ctx.globalAlpha = 0.55;
      ctx.strokeStyle = tool === "eraser" ? "#ffffff" : color;
      ctx.fillStyle = ctx.strokeStyle;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.setTransform(sx, 0, 0, sy, 0, 0);
      ctx.lineWidth = 2 * r;
      ctx.beginPath();
      ctx.moveTo(pts[0].col + 0.5, pts[0].row + 0.5);
      for (const p of pts.slice(1)) ctx.lineTo(p.col + 0.5, p.row + 0.5);
      if (pts.length === 1) {
        ctx.arc(pts[0].col + 0.5, pts[0].row + 0.5, r, 0, 2 * Math.PI);
        ctx.fill();
      } else {
        ctx.stroke();
      }
      ctx.restore();
    } else if (tool === "box" && pts.length) {
      const a = pts[0];
      const b = pts[pts.length - 1];
      ctx.save();
      ctx.strokeStyle = "#fadc00";
      ctx.lineWidth = 2 * (window.devicePixelRatio || 1);
      ctx.strokeRect(
        Math.min(a.col, b.col) * sx, Math.min(a.row, b.row) * sy,
        (Math.abs(b.col - a.col) + 1) * sx, (Math.abs(b.row - a.row) + 1) * sy,
      );
      ctx.restore();
    }
  }

  function draw() {
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (image) ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    const sx = canvas.width / width();
    const sy = canvas.height / height();
    if (pending) drawPreview(ctx, pending, sx, sy);
    if (gesture) drawPreview(ctx, gesture, sx, sy);
    const tool = model.get("tool");
    if (hover && !gesture && (tool === "brush" || tool === "eraser")) {
      ctx.save();
      ctx.strokeStyle = tool === "eraser" ? "#ffffff" : model.get("preview_color");
      ctx.lineWidth = window.devicePixelRatio || 1;
      ctx.beginPath();
      ctx.ellipse((hover.col + 0.5) * sx, (hover.row + 0.5) * sy, model.get("brush_radius") * sx,
        model.get("brush_radius") * sy, 0, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.restore();
    }
  }

  function loadImage() {
    const data = model.get("png");
    const token = ++loadToken;
    if (!data || data.byteLength === 0) {
      image = null;
      draw();
      return;
    }
    const url = URL.createObjectURL(new Blob([data], { type: "image/png" }));
    const img = new Image();
    img.onload = () => {
      URL.revokeObjectURL(url);
      if (token !== loadToken) return; // a newer image is on its way
      image = img;
      pending = null;
      canvas.dataset.renderCount = String(Number(canvas.dataset.renderCount) + 1);
      draw();
    };
    img.onerror = () => URL.revokeObjectURL(url);
    img.src = url;
  }

  function send(phase, point, event) {
    model.send({
      kind: "pointer",
      phase,
      row: point.row,
      col: point.col,
      button: event.button === 2 ? 2 : 0,
      shift: !!event.shiftKey,
      alt: !!event.altKey,
      ctrl: !!(event.ctrlKey || event.metaKey),
    });
  }

  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (e) => {
    if (model.get("tool") === "none" || gesture) return;
    e.preventDefault();
    if (model.get("shortcut_keys").length) canvas.focus({ preventScroll: true });
    canvas.setPointerCapture(e.pointerId);
    const p = toImage(e);
    gesture = { points: [p], pointerId: e.pointerId, button: e.button };
    send("down", p, e);
    draw();
  });
  canvas.addEventListener("pointermove", (e) => {
    const p = toImage(e);
    if (gesture && e.pointerId === gesture.pointerId) {
      const last = gesture.points[gesture.points.length - 1];
      if (Math.hypot(p.row - last.row, p.col - last.col) >= 0.25) {
        gesture.points.push(p);
        send("move", p, e);
      }
    }
    hover = p;
    draw();
  });
  function finish(e, phase) {
    if (!gesture || e.pointerId !== gesture.pointerId) return;
    const p = phase === "up" ? toImage(e) : gesture.points[gesture.points.length - 1];
    gesture.points.push(p);
    send(phase, p, { button: gesture.button, shiftKey: e.shiftKey, altKey: e.altKey, ctrlKey: e.ctrlKey });
    pending = phase === "up" ? gesture : null;
    gesture = null;
    clearTimeout(pendingTimer);
    pendingTimer = setTimeout(() => {
      pending = null;
      draw();
    }, 2000); // an action that changes nothing sends no new image
    draw();
  }
  canvas.addEventListener("pointerup", (e) => finish(e, "up"));
  canvas.addEventListener("pointercancel", (e) => finish(e, "cancel"));
  canvas.addEventListener("pointerleave", () => {
    hover = null;
    draw();
  });

  canvas.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.altKey || e.metaKey) return; // the browser's and Jupyter's own shortcuts
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (!model.get("shortcut_keys").includes(key)) return;
    e.preventDefault(); // arrows would scroll the page
    e.stopPropagation();
    model.send({ kind: "key", key, shift: !!e.shiftKey });
  });
  let wheelRest = 0; // pixels scrolled towards the next step (trackpads send small deltas)
  canvas.addEventListener("wheel", (e) => {
    if (!model.get("wheel_slices")) return;
    e.preventDefault();
    const scale = e.deltaMode === 1 ? WHEEL_STEP_PX / 3 : e.deltaMode === 2 ? 10 * WHEEL_STEP_PX : 1;
    wheelRest += e.deltaY * scale;
    const steps = Math.trunc(wheelRest / WHEEL_STEP_PX);
    if (steps !== 0) {
      wheelRest -= steps * WHEEL_STEP_PX;
      model.send({ kind: "wheel", steps });
    }
  }, { passive: false });

  model.on("change:png", loadImage);
  model.on("change:shortcut_keys", resize);
  for (const name of ["image_width", "image_height", "zoom", "aspect", "tool"]) {
    model.on(`change:${name}`, resize);
  }
  model.on("change:brush_radius", draw);
  model.on("change:preview_color", draw);
  resize();
  loadImage();
  return () => clearTimeout(pendingTimer);
}

export default { render };
