// The template upload page: the form's fields go to the page (JSON back: the signed upload
// parameters, or errors by field), then the file goes straight to the signed upload URL.
// XMLHttpRequest.send(File) streams the file from disk: it is never read into memory here,
// and the server streams the body to the image store.
(function () {
  "use strict";
  const form = document.getElementById("stencil-upload-form");
  if (!form) return;
  const fileInput = document.getElementById("id_upload_file");
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const result = document.getElementById("upload-result");

  function human(bytes) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return bytes.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function showErrors(errors) {
    form.querySelectorAll(".stencil-field-error").forEach((el) => el.remove());
    Object.entries(errors).forEach(([name, messages]) => {
      const row = form.querySelector(".field-" + name) || form;
      const list = document.createElement("ul");
      list.className = "errorlist stencil-field-error";
      messages.forEach((message) => {
        const item = document.createElement("li");
        item.textContent = (row === form && name !== "__all__" ? name + ": " : "") + message;
        list.appendChild(item);
      });
      row.prepend(list);
    });
    status.textContent = "Not uploaded: see the errors above.";
  }

  function upload(file, params) {
    const xhr = new XMLHttpRequest();
    const started = performance.now();
    xhr.open("POST", params.post_url);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("X-Signature", params.signature);
    xhr.setRequestHeader("X-Metadata", params.metadata);
    xhr.setRequestHeader("X-Expires", params.expires);
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      const percent = Math.floor((event.loaded * 100) / event.total);
      const seconds = (performance.now() - started) / 1000;
      const speed = seconds > 0 ? event.loaded / seconds : 0;
      const left = speed > 0 ? (event.total - event.loaded) / speed : 0;
      bar.value = percent;
      status.textContent = percent + "% — " + human(event.loaded) + " of " + human(event.total) +
        " — " + human(speed) + "/s — " + Math.ceil(left) + " s left";
    });
    xhr.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = {detail: xhr.responseText}; }
      if (xhr.status === 201) {
        bar.value = 100;
        status.textContent = "Uploaded: " + body.download_state + ", " + body.state + " (" +
          human(body.physical_size || 0) + ").";
        const link = document.createElement("a");
        link.href = params.template_url;
        link.textContent = "Open the template";
        result.replaceChildren(link);
      } else {
        const message = body.detail || Object.values(body).flat().join(" ");
        status.textContent = "Upload refused (" + xhr.status + "): " + message;
      }
    });
    xhr.addEventListener("error", () => { status.textContent = "Upload failed: the connection broke."; });
    xhr.send(file);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = fileInput.files[0];
    if (!file) { showErrors({upload_file: ["Choose a file to upload."]}); return; }
    const data = new FormData(form);
    data.delete("upload_file"); // the file goes to the signed URL, not to this page
    data.set("size", String(file.size));
    status.textContent = "Asking for an upload URL…";
    const response = await fetch(form.action, {
      method: "POST", body: data, credentials: "same-origin",
      headers: {"Accept": "application/json"},
    });
    const body = await response.json();
    if (!response.ok) { showErrors(body); return; }
    form.querySelectorAll(".stencil-field-error").forEach((el) => el.remove());
    upload(file, body);
  });
})();
