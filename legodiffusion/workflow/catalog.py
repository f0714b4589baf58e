"""Built-in workflows: text-to-image, image-to-image, inpainting and two-stage hires (:mod:`.hires`)
for every family, by name. Each family's graphs are built in its own module: :mod:`.stable` (SD
1.x/2.x, SDXL, SD3), :mod:`.flux`, :mod:`.flux2`, :mod:`.zimage` and :mod:`.qwenimage`.
"""

from __future__ import annotations

from legodiffusion.workflow.flux import flux_img2img, flux_inpaint, flux_schnell_txt2img, flux_txt2img
from legodiffusion.workflow.flux2 import flux2_klein_txt2img
from legodiffusion.workflow.hires import flux_hires, flux_schnell_hires, sd3_hires, sd_hires, sdxl_hires
from legodiffusion.workflow.qwenimage import qwenimage_txt2img
from legodiffusion.workflow.stable import (
    sd3_img2img,
    sd3_inpaint,
    sd3_txt2img,
    sd_img2img,
    sd_inpaint,
    sd_txt2img,
    sdxl_img2img,
    sdxl_inpaint,
    sdxl_txt2img,
)
from legodiffusion.workflow.zimage import zimage_turbo_txt2img, zimage_txt2img

BUILTIN_WORKFLOWS = {
    "sd-txt2img": sd_txt2img,
    "sdxl-txt2img": sdxl_txt2img,
    "sd3-txt2img": sd3_txt2img,
    "flux-txt2img": flux_txt2img,
    "flux-schnell-txt2img": flux_schnell_txt2img,
    "sd-img2img": sd_img2img,
    "sdxl-img2img": sdxl_img2img,
    "sd3-img2img": sd3_img2img,
    "flux-img2img": flux_img2img,
    "sd-inpaint": sd_inpaint,
    "sdxl-inpaint": sdxl_inpaint,
    "sd3-inpaint": sd3_inpaint,
    "flux-inpaint": flux_inpaint,
    "sd-hires": sd_hires,
    "sdxl-hires": sdxl_hires,
    "sd3-hires": sd3_hires,
    "flux-hires": flux_hires,
    "flux-schnell-hires": flux_schnell_hires,
    "flux2-klein-txt2img": flux2_klein_txt2img,
    "zimage-txt2img": zimage_txt2img,
    "zimage-turbo-txt2img": zimage_turbo_txt2img,
    "qwenimage-txt2img": qwenimage_txt2img,
}
