// Client-side routes. The server answers every one of these paths with index.html
// (src/api/web.rs), so each is a link that can be shared, bookmarked or reloaded.
import { createRouter, createWebHistory } from 'vue-router'
import CreateView from './views/CreateView.vue'

export const router = createRouter({
  history: createWebHistory(),
  routes: [
    { path: '/', name: 'create', component: CreateView },
    // The task page holds the viewer; it and the lists are split into their own chunks.
    { path: '/tasks/:id', name: 'task', component: () => import('./views/TaskView.vue'), props: true },
    { path: '/library', name: 'library', component: () => import('./views/LibraryView.vue') },
    { path: '/history', name: 'history', component: () => import('./views/HistoryView.vue') },
    { path: '/:rest(.*)*', name: 'not-found', component: () => import('./views/NotFoundView.vue') },
  ],
  scrollBehavior: () => ({ top: 0 }),
})

// Move focus to the new page's heading so screen readers announce the change.
router.afterEach(() => {
  requestAnimationFrame(() => {
    const heading = document.querySelector<HTMLElement>('main h1')
    if (heading) {
      heading.setAttribute('tabindex', '-1')
      heading.focus({ preventScroll: true })
    }
  })
})
