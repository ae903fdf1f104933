// The inpainting mask, painted with the mouse (or pen, or touch) over the source image: a canvas at the
// image's own size, painted in one colour whose red channel is full (shown half transparent), exported as a
// PNG whose red channel is the mask: 255 where the model repaints, 0 elsewhere.

const PAINT = [255, 0, 160];
const PAINT_STYLE = `rgb(${PAINT.join(", ")})`;

export class MaskEditor {
  constructor(canvas, brushInput) {
    this.canvas = canvas;
    this.brushInput = brushInput;
    this.context = canvas.getContext("2d");
    this.last = null;
    canvas.addEventListener("pointerdown", (event) => this.start(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    for (const name of ["pointerup", "pointerleave", "pointercancel"]) {
      canvas.addEventListener(name, () => { this.last = null; });
    }
  }

  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.clear();
  }

  clear() {
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * this.canvas.width,
      y: ((event.clientY - box.top) / box.height) * this.canvas.height,
    };
  }

  // The brush size is in screen pixels, so it feels the same at any image size.
  radius() {
    const box = this.canvas.getBoundingClientRect();
    const scale = box.width ? this.canvas.width / box.width : 1;
    return (Number(this.brushInput.value) / 2) * scale;
  }

  start(event) {
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    this.last = this.point(event);
    this.stroke(this.last, this.last);
  }

  move(event) {
    if (!this.last) return;
    const next = this.point(event);
    this.stroke(this.last, next);
    this.last = next;
  }

  stroke(from, to) {
    const context = this.context;
    context.strokeStyle = PAINT_STYLE;
    context.lineCap = "round";
    context.lineWidth = this.radius() * 2;
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
    context.stroke();
  }

  invert() {
    const { width, height } = this.canvas;
    const data = this.context.getImageData(0, 0, width, height);
    for (let index = 0; index < data.data.length; index += 4) {
      data.data.set(PAINT, index);
      data.data[index + 3] = 255 - data.data[index + 3];
    }
    this.context.putImageData(data, 0, 0);
  }

  isEmpty() {
    const { width, height } = this.canvas;
    if (!width || !height) return true;
    const alpha = this.context.getImageData(0, 0, width, height).data;
    for (let index = 3; index < alpha.length; index += 4) if (alpha[index] > 0) return false;
    return true;
  }

  // A mask image from a file, white (bright) = repaint; it must have the source image's size.
  load(image) {
    const { width, height } = this.canvas;
    if (image.naturalWidth !== width || image.naturalHeight !== height) {
      throw new Error(
        `The mask is ${image.naturalWidth}×${image.naturalHeight} pixels but the source image is ` +
        `${width}×${height}; use a mask of the same size.`,
      );
    }
    const scratch = document.createElement("canvas");
    scratch.width = width;
    scratch.height = height;
    const context = scratch.getContext("2d");
    context.drawImage(image, 0, 0);
    const pixels = context.getImageData(0, 0, width, height);
    for (let index = 0; index < pixels.data.length; index += 4) {
      const bright = pixels.data[index] * (pixels.data[index + 3] / 255);
      pixels.data.set(PAINT, index);
      pixels.data[index + 3] = bright;
    }
    this.context.putImageData(pixels, 0, 0);
  }

  toBlob() {
    const scratch = document.createElement("canvas");
    scratch.width = this.canvas.width;
    scratch.height = this.canvas.height;
    const context = scratch.getContext("2d");
    context.fillStyle = "black";
    context.fillRect(0, 0, scratch.width, scratch.height);
    context.drawImage(this.canvas, 0, 0);
    return new Promise((resolve) => scratch.toBlob(resolve, "image/png"));
  }
}
