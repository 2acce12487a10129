// The softphone's audio thread: the microphone to 20 ms frames of 8 kHz mu-law, and the bot's
// 8 kHz mu-law to the speaker, with Media Streams' marks and clear.
//
// Capture: the input (the context's rate) is resampled to 8 kHz with an anti-alias low-pass
// (resampler.js), companded, and posted as 160-byte frames with the frame's level (dBFS).
// Playback: each chunk the page receives is decoded and resampled to the context's rate at once
// and queued; the speaker takes 128 samples a quantum, silence when the queue is empty. A mark is
// a position in that queue: once the speaker has taken every sample before it, the mark is posted
// back as played. `clear` drops the queue within the quantum it arrives in, and posts every mark
// still pending at once (Twilio does the same), with the frame it took effect at.

import { DECODE, encodeFloat } from "./mulaw.js";
import { Resampler } from "./resampler.js";

const FRAME = 160; // 20 ms at 8 kHz
const TAP_BLOCK = 2048; // samples of output per tap message (tests read what was played)

class PhoneProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.down = new Resampler(sampleRate, 8000);
    this.up = new Resampler(8000, sampleRate);
    this.frame = new Uint8Array(FRAME);
    this.filled = 0;
    this.energy = 0;
    this.capturing = true;
    this.queue = []; // Float32Arrays at the context's rate
    this.head = 0; // samples of queue[0] already played
    this.queued = 0; // samples ever queued
    this.played = 0; // samples ever played
    this.marks = []; // [{at: queued when it came, name}]
    this.tap = options.processorOptions?.tap ? { frame: 0, block: new Float32Array(TAP_BLOCK), used: 0 } : null;
    this.port.onmessage = (event) => this.command(event.data);
  }

  command(message) {
    switch (message.type) {
      case "play": {
        const pcm = new Float32Array(message.mulaw.length);
        for (let i = 0; i < pcm.length; i++) pcm[i] = DECODE[message.mulaw[i]];
        const out = this.up.process(pcm);
        if (out.length) {
          this.queue.push(out);
          this.queued += out.length;
        }
        break;
      }
      case "mark":
        this.marks.push({ at: this.queued, name: message.name });
        this.release();
        break;
      case "clear": {
        const dropped = this.queued - this.played;
        this.queue = [];
        this.head = 0;
        this.queued = this.played;
        this.up.reset();
        const marks = this.marks.map((mark) => mark.name);
        this.marks = [];
        this.port.postMessage({ type: "cleared", marks, frame: currentFrame, dropped });
        break;
      }
      case "stop":
        this.capturing = false;
        break;
    }
  }

  process(inputs, outputs) {
    const mic = inputs[0] && inputs[0][0];
    if (mic && this.capturing) this.capture(mic);
    const out = outputs[0];
    this.playInto(out[0]);
    for (let channel = 1; channel < out.length; channel++) out[channel].set(out[0]);
    if (this.tap) this.keep(out[0]);
    return true;
  }

  capture(samples) {
    const pcm = this.down.process(samples);
    for (let i = 0; i < pcm.length; i++) {
      this.energy += pcm[i] * pcm[i];
      this.frame[this.filled++] = encodeFloat(pcm[i]);
      if (this.filled === FRAME) {
        const level = 10 * Math.log10(this.energy / FRAME + 1e-12);
        this.port.postMessage({ type: "frame", mulaw: this.frame, level }, [this.frame.buffer]);
        this.frame = new Uint8Array(FRAME);
        this.filled = 0;
        this.energy = 0;
      }
    }
  }

  playInto(out) {
    let written = 0;
    while (written < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const n = Math.min(out.length - written, chunk.length - this.head);
      out.set(chunk.subarray(this.head, this.head + n), written);
      written += n;
      this.head += n;
      if (this.head === chunk.length) {
        this.queue.shift();
        this.head = 0;
      }
    }
    out.fill(0, written);
    this.played += written;
    if (this.marks.length) this.release();
  }

  release() {
    while (this.marks.length && this.marks[0].at <= this.played) {
      this.port.postMessage({ type: "played", name: this.marks.shift().name });
    }
  }

  keep(out) {
    // Tests only (processorOptions.tap): what the speaker got, in blocks, with their first frame.
    const tap = this.tap;
    if (tap.used === 0) tap.frame = currentFrame; // the frame this quantum starts at
    tap.block.set(out, tap.used);
    tap.used += out.length;
    if (tap.used + out.length > TAP_BLOCK) {
      const block = tap.block.slice(0, tap.used);
      this.port.postMessage({ type: "tap", frame: tap.frame, samples: block }, [block.buffer]);
      tap.used = 0;
    }
  }
}

registerProcessor("phone", PhoneProcessor);
