// The asset picker (templates/console/asset_picker.html): from its search box, the down arrow or
// Enter goes to the matches (Enter picks the first, instead of sending the form half-filled);
// between the matches the arrow keys move as radio buttons do.
(function () {
  "use strict";
  document.addEventListener("keydown", function (ev) {
    var search = ev.target;
    if (!search.matches || !search.matches("[data-picker-search]")) return;
    if (ev.key !== "ArrowDown" && ev.key !== "Enter") return;
    var picker = search.closest("[data-component=asset-picker]");
    var option = picker.querySelector(".picker-matches input:checked") || picker.querySelector(".picker-matches input");
    if (ev.key === "Enter") ev.preventDefault();
    if (!option) return;
    ev.preventDefault();
    option.checked = true;
    option.focus();
  });
})();
